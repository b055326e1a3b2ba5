"""SAE features as targets: random SAEs of every architecture saved by sae-lens itself on
the tiny models' dimensions, read by featviz and by ``SAE.encode`` on the same hooked
activations; sparsify folders and Gemma Scope params.npz against their published
formulas; the torch and JAX backends on one file; malformed files."""
import json
import os

import numpy as np
import pytest
import torch

import featviz
from featviz import FeatvizError
from featviz.mining import miner as miner_mod
from featviz.mining.cache import slug
from featviz.mining.miner import MineConfig, read_all
from featviz.model.forward import run, with_bos
from featviz.targets.effects import logit_effect, output_direction
from featviz.targets.kinds import TORCH_OPS
from featviz.targets.sae import encode
from featviz.targets.read import evaluate_ids

sae_lens = pytest.importorskip("sae_lens")
from sae_lens.saes.sae import SAEMetadata  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog. A cat sat on the mat."


def make_sae(arch, d_in, d_sae, hook, *, seed=0, head=None, **cfg):
    """A random sae-lens SAE of ``arch`` whose features fire on some tokens (small random
    biases, thresholds below most pre-activations)."""
    cls = {"standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig),
           "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig),
           "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig),
           "gated": (sae_lens.GatedSAE, sae_lens.GatedSAEConfig)}[arch]
    meta = SAEMetadata(hook_name=hook, hook_head_index=head)
    if hook.endswith("hook_z") and head is None:
        cfg.setdefault("reshape_activations", "hook_z")
    sae = cls[0](cls[1](d_in=d_in, d_sae=d_sae, metadata=meta, **cfg))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            scale = 0.05 if name in ("b_enc", "b_gate", "b_mag", "r_mag", "b_dec") else 0.4
            p.copy_(torch.randn(p.shape, generator=g) * scale)
            if name == "threshold":
                p.copy_(torch.rand(p.shape, generator=g) * 0.2)
    return sae


def saved(sae, path):
    sae.save_model(str(path))
    return str(path)


def hooked(h, site, layer, text=TEXT):
    ids = with_bos(h, h.encode(text))
    with torch.no_grad():
        caps, _ = run(h, {(site, layer)}, input_ids=ids)
    return caps, caps[(site, layer)]


def lens_encode(sae, x, h, head=None):
    """``SAE.encode`` on the activation as TransformerLens hands it over."""
    if sae.cfg.metadata.hook_name.endswith("hook_z"):
        x = x.reshape(x.shape[0], x.shape[1], h.n_heads, h.head_dim)
        if head is not None:
            x = x[:, :, head]
    with torch.no_grad():
        return sae.encode(x)


def featviz_all(h, path):
    """Every feature at every position, through the miner's one-encoding path and through
    each atom on its own."""
    ts = featviz.parse_targets(f"sae:{path}:all", h)
    caps, _ = hooked(h, ts[0].site[0], ts[0].layer)
    with torch.no_grad():
        together = read_all(caps, ts, h).permute(1, 2, 0)
        alone = torch.stack([t.per_position(caps, h) for t in ts], -1)
    return together, alone


CASES = [  # (architecture, hook, extra config)
    ("standard", "blocks.1.hook_resid_pre", {}),
    ("standard", "blocks.2.hook_resid_post", {"apply_b_dec_to_input": False}),
    ("topk", "blocks.1.hook_resid_mid", {"k": 4}),
    ("topk", "blocks.0.hook_mlp_out", {"k": 6, "rescale_acts_by_decoder_norm": True}),
    ("jumprelu", "blocks.1.hook_attn_out", {}),
    ("gated", "blocks.2.attn.hook_z", {}),
    ("standard", "blocks.1.mlp.hook_post", {}),
    ("jumprelu", "blocks.0.hook_resid_post", {"normalize_activations": "constant_norm_rescale"}),
    ("standard", "blocks.2.hook_resid_mid", {"normalize_activations": "layer_norm"}),
]


@pytest.mark.parametrize("arch,hook,cfg", CASES, ids=[f"{a}-{h.split('.', 2)[2]}" for a, h, _ in CASES])
def test_features_equal_sae_lens_encode(tiny, tmp_path, arch, hook, cfg):
    site = hook.split(".", 2)[2]
    d_in = {"mlp.hook_post": tiny.d_mlp, "attn.hook_z": tiny.n_heads * tiny.head_dim}.get(
        site, tiny.d_model)
    sae = make_sae(arch, d_in, 40, hook, **cfg)
    path = saved(sae, tmp_path / arch)
    together, alone = featviz_all(tiny, path)
    _, x = hooked(tiny, site, int(hook.split(".")[1]))
    want = lens_encode(sae, x, tiny)
    assert (want > 0).any() and (want == 0).any()          # the features do something
    torch.testing.assert_close(together, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(alone, want, atol=1e-5, rtol=0)


def test_one_head_sae_reads_its_head(llama, tmp_path):
    sae = make_sae("standard", llama.head_dim, 24, "blocks.1.attn.hook_z", head=2)
    path = saved(sae, tmp_path / "head")
    together, _ = featviz_all(llama, path)
    _, x = hooked(llama, "attn.hook_z", 1)
    torch.testing.assert_close(together, lens_encode(sae, x, llama, head=2), atol=1e-5, rtol=0)


def test_pre_6_flat_config_reads_like_v6(llama, tmp_path):
    sae = make_sae("topk", llama.d_model, 32, "blocks.1.hook_resid_post", k=5)
    new = saved(sae, tmp_path / "v6")
    old = tmp_path / "v5"
    old.mkdir()
    (old / "sae_weights.safetensors").write_bytes((tmp_path / "v6" / "sae_weights.safetensors")
                                                   .read_bytes())
    (old / "cfg.json").write_text(json.dumps({
        "d_in": llama.d_model, "d_sae": 32, "hook_point": "blocks.1.hook_resid_post",
        "hook_point_layer": 1, "hook_point_head_index": None, "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 5}, "apply_b_dec_to_input": True,
        "normalize_activations": "none", "sae_lens_training_version": "3.12.0"}))
    a, _ = featviz_all(llama, new)
    b, _ = featviz_all(llama, str(old))
    assert featviz.parse_target(f"sae:{old}:3").sae_spec.architecture == "topk"
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_folded_norm_scaling_factor(llama, tmp_path):
    """expected_average_only_in with a norm_scaling_factor in cfg.json: featviz folds it as
    SAELens' fold_activation_norm_scaling_factor does."""
    sae = make_sae("standard", llama.d_model, 24, "blocks.1.hook_resid_post")
    path = saved(sae, tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    cfg.update(normalize_activations="expected_average_only_in", norm_scaling_factor=2.5)
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    sae.fold_activation_norm_scaling_factor(2.5)
    got, _ = featviz_all(llama, path)
    _, x = hooked(llama, "hook_resid_post", 1)
    torch.testing.assert_close(got, lens_encode(sae, x, llama), atol=1e-5, rtol=0)


def test_sparsify_folder_is_topk_with_the_hook_from_its_name(llama, tmp_path):
    from safetensors.torch import save_file
    g = torch.Generator().manual_seed(3)
    d, n, k = llama.d_model, 48, 5
    enc_w, enc_b = torch.randn(n, d, generator=g) * 0.4, torch.randn(n, generator=g) * 0.05
    w_dec, b_dec = torch.randn(n, d, generator=g) * 0.4, torch.randn(d, generator=g) * 0.05
    folder = tmp_path / "layers.1"
    folder.mkdir()
    save_file({"encoder.weight": enc_w, "encoder.bias": enc_b, "W_dec": w_dec, "b_dec": b_dec},
              str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"expansion_factor": 2, "normalize_decoder": True,
                                                 "num_latents": n, "k": k, "d_in": d}))
    t = featviz.parse_target(f"sae:{folder}:0", llama)
    assert t.sae_spec.hook == "blocks.1.hook_resid_post" and "folder name" in t.sae_spec.assumed
    got, _ = featviz_all(llama, str(folder))
    _, x = hooked(llama, "hook_resid_post", 1)
    pre = torch.relu((x - b_dec) @ enc_w.T + enc_b)        # sparsify: ReLU, then the top k
    top = pre.topk(k, dim=-1)
    want = torch.zeros_like(pre).scatter_(-1, top.indices, top.values)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_gemma_scope_params_npz_is_jumprelu(llama, tmp_path):
    rng = np.random.default_rng(4)
    d, n = llama.d_model, 40
    p = {"W_enc": rng.standard_normal((d, n)) * 0.4, "W_dec": rng.standard_normal((n, d)) * 0.4,
         "b_enc": rng.standard_normal(n) * 0.05, "b_dec": rng.standard_normal(d) * 0.05,
         "threshold": rng.random(n) * 0.2}
    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_2" / "width_16k" / "average_l0_5"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **{k: v.astype(np.float32) for k, v in p.items()})
    t = featviz.parse_target(f"sae:{folder / 'params.npz'}:1", llama)
    assert t.sae_spec.hook == "blocks.2.hook_resid_post"
    got, _ = featviz_all(llama, str(folder / "params.npz"))
    _, x = hooked(llama, "hook_resid_post", 2)
    pre = x @ torch.tensor(p["W_enc"]).float() + torch.tensor(p["b_enc"]).float()  # no b_dec
    want = torch.relu(pre) * (pre > torch.tensor(p["threshold"]).float())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch,cfg", [("topk", {"k": 4}), ("jumprelu", {}),
                                      ("gated", {"normalize_activations": "layer_norm"})])
def test_the_same_file_reads_the_same_on_jax(llama, tmp_path, arch, cfg):
    pytest.importorskip("jax")
    from featviz.backends.jax.forward import embed_ids, forward, to_jax
    from featviz.backends.jax.read import directions_for, evaluate, per_position
    path = saved(make_sae(arch, llama.d_model, 32, "blocks.1.hook_resid_mid", **cfg),
                 tmp_path / arch)
    ids = with_bos(llama, llama.encode(TEXT))
    jm = to_jax(llama)
    for spec in (f"sae:{path}:3", f"sae:{path}:7@max", f"sae:{path}:3 - 0.5*mlp:1:2"):
        t = featviz.parse_target(spec, llama)
        with torch.no_grad():
            caps, _ = run(llama, t.sites(), input_ids=ids)
            want = t.per_position(caps, llama).numpy()
        jc, _ = forward(jm, embed_ids(jm, ids.numpy()), sites=t.sites())
        dirs = directions_for(t, llama)
        np.testing.assert_allclose(np.asarray(per_position(t, jc, jm, dirs)), want, atol=1e-5)
        np.testing.assert_allclose(np.asarray(evaluate(t, jc, jm, dirs)),
                                   t.evaluate(caps, llama).numpy(), atol=1e-5)


def test_mining_every_feature_encodes_once_per_batch(llama, tmp_path, monkeypatch):
    path = saved(make_sae("jumprelu", llama.d_model, 64, "blocks.1.hook_resid_post"),
                 tmp_path / "j")
    corpus = tmp_path / "c.txt"
    corpus.write_text((TEXT + " ") * 40)
    ts = featviz.parse_targets(f"sae:{path}:all", llama)
    calls, batches = [], []
    real, real_batch, real_relu = miner_mod.encode, miner_mod.read_batch, miner_mod.relu_entries
    monkeypatch.setattr(miner_mod, "encode", lambda *a, **k: calls.append(1) or real(*a, **k))

    def relu_entries(*a):                                   # an encoding when it gives one
        got = real_relu(*a)
        if got is not None:
            calls.append(1)
        return got
    monkeypatch.setattr(miner_mod, "relu_entries", relu_entries)
    monkeypatch.setattr(miner_mod, "read_batch",
                        lambda *a, **k: batches.append(1) or real_batch(*a, **k))
    cfg = MineConfig(max_tokens=600, window=24, batch_size=8)
    recs = featviz.mine(llama, ts, cfg, source=str(corpus), progress=False)
    assert len(recs) == 64 and len(batches) >= 2 and len(calls) == len(batches)
    # the top exemplar of a feature reads the same when the feature is read alone
    r = next(r for r in recs if r.top)
    t = featviz.parse_target(r.target, llama)
    alone = featviz.read_ids(llama, [t], r.top[0].token_ids)
    assert abs(alone.values[str(t)][r.top[0].peak] - r.top[0].value) < 1e-4


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "standard", "gated"])
def test_a_whole_dictionary_reads_as_encode_does(llama, tmp_path, arch):
    """The whole-dictionary reading (TopK by blocked_topk, ReLU and JumpReLU from the mask
    of their pre-activations, the rest by encode and a scan) gives the dense features of
    ``encode`` to the bit and exactly their nonzero entries, NaN inputs included."""
    cfg_k = {"k": 6} if arch == "topk" else {}
    sae = make_sae(arch, llama.d_model, 64, "blocks.1.hook_resid_post", **cfg_k)
    ts = featviz.parse_targets(f"sae:{saved(sae, tmp_path / 'k')}:all", llama)
    caps, _ = hooked(llama, ts[0].site[0], ts[0].layer)
    x = caps[ts[0].site]
    spec, w = ts[0].sae_spec, ts[0].sae_weights(llama, x)
    for poison in (False, True):
        if poison:
            x[0, 1, 3] = float("nan")
        per, nz = miner_mod.read_values(caps, ts, llama)
        want = encode(spec, w, x, TORCH_OPS)
        assert torch.equal(per.permute(1, 2, 0), want.float()) or \
            (poison and torch.equal(per.permute(1, 2, 0).nan_to_num(), want.nan_to_num()))
        if not poison:
            flat = want.reshape(-1, spec.d_sae)
            r, t = torch.nonzero(flat, as_tuple=True)
            got = sorted(zip(nz.rows.tolist(), nz.targets.tolist(), nz.values.tolist()))
            assert got == sorted(zip(r.tolist(), t.tolist(), flat[r, t].tolist()))


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "standard"])
def test_a_whole_dictionary_mines_the_same_from_its_entries(llama, tmp_path, monkeypatch,
                                                             arch):
    """Mining all features of an SAE reduces each batch from its nonzero entries (for TopK
    the k per token the encoding chose: no scan of the dense values); every figure equals
    the dense reductions', to the bit."""
    cfg_k = {"k": 6} if arch == "topk" else {}
    sae = make_sae(arch, llama.d_model, 64, "blocks.1.hook_resid_post", **cfg_k)
    ts = featviz.parse_targets(f"sae:{saved(sae, tmp_path / 'k')}:all", llama)
    corpus = tmp_path / "c.txt"
    corpus.write_text((TEXT + " ") * 40)
    cfg = MineConfig(max_tokens=600, window=24, batch_size=8)
    real = miner_mod.read_values
    seen = []
    monkeypatch.setattr(miner_mod, "read_values",
                        lambda *a: seen.append(real(*a)[1]) or real(*a))
    fast = miner_mod.mine(llama, ts, cfg, source=str(corpus), progress=False)
    assert seen and all(nz is not None for nz in seen)
    if arch == "topk":
        assert all(len(nz.rows) <= 6 * 8 * 25 for nz in seen)
    monkeypatch.setattr(miner_mod, "read_values", lambda *a: (real(*a)[0], None))
    slow = miner_mod.mine(llama, ts, cfg, source=str(corpus), progress=False)
    assert [r.to_json() for r in fast] == [r.to_json() for r in slow]
    assert any(r.mean > 0 for r in fast)
    # a subset of the features reads the dense values: no entries
    caps, _ = hooked(llama, ts[0].site[0], ts[0].layer)
    assert miner_mod.read_values(caps, ts[:5], llama)[1] is None


def test_logit_effect_uses_the_decoder_row(tiny, tmp_path):
    sae = make_sae("standard", tiny.d_model, 16, "blocks.1.hook_resid_post")
    t = featviz.parse_target(f"sae:{saved(sae, tmp_path / 'r')}:5", tiny)
    torch.testing.assert_close(output_direction(tiny, t), sae.W_dec[5].detach())
    z = make_sae("standard", tiny.n_heads * tiny.head_dim, 16, "blocks.2.attn.hook_z")
    t = featviz.parse_target(f"sae:{saved(z, tmp_path / 'z')}:4", tiny)
    o = tiny.attn_out_proj(2).weight.detach()
    row = z.W_dec[4].detach()
    want = o @ row if tiny.arch == "llama" else row @ o
    torch.testing.assert_close(output_direction(tiny, t), want)
    assert logit_effect(tiny, t)["top"]


BAD = [  # (what to break, the words the error must contain)
    ("cfg", {"drop": "d_sae"}, "lacks 'd_sae'"),
    ("cfg", {"set": {"metadata": {"hook_name": "blocks.1.ln2.hook_normalized"}}}, "not one featviz reads"),
    ("cfg", {"set": {"metadata": {"hook_name": "blocks.9.hook_resid_post"}}}, "names layer 9"),
    ("cfg", {"set": {"d_sae": 20}}, "has shape"),
    ("cfg", {"set": {"d_in": 12}}, "d_in is 12 but"),
    ("cfg", {"set": {"architecture": "matryoshka"}}, "not supported"),
    ("weights", "b_enc", "lack tensor 'b_enc'"),
    ("rm", "cfg.json", "cfg.json is missing"),
]


@pytest.mark.parametrize("how,what,words", BAD)
def test_malformed_sae_is_a_one_line_error(llama, tmp_path, how, what, words):
    from safetensors.torch import load_file, save_file
    path = saved(make_sae("standard", llama.d_model, 16, "blocks.1.hook_resid_post"),
                 tmp_path / "s")
    f = tmp_path / "s" / "cfg.json"
    if how == "cfg":
        cfg = json.loads(f.read_text())
        cfg.pop(what.get("drop", "-"), None)
        cfg.update(what.get("set", {}))
        f.write_text(json.dumps(cfg))
    elif how == "weights":
        w = load_file(str(tmp_path / "s" / "sae_weights.safetensors"))
        w.pop(what)
        save_file(w, str(tmp_path / "s" / "sae_weights.safetensors"))
    else:
        os.remove(tmp_path / "s" / what)
    with pytest.raises(FeatvizError) as e:
        featviz.parse_target(f"sae:{path}:3", llama).per_position(
            *hooked(llama, "hook_resid_post", 1)[:1], llama)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_width_and_range_errors(llama, gpt2, tmp_path):
    path = saved(make_sae("standard", llama.d_model, 16, "blocks.1.mlp.hook_post"),
                 tmp_path / "w")
    with pytest.raises(FeatvizError, match=r"d_in is 32 but blocks.1.mlp.hook_post is 48 wide"):
        featviz.parse_target(f"sae:{path}:1", llama)
    with pytest.raises(FeatvizError, match="features 0-15"):
        featviz.parse_target(f"sae:{path}:16")
    with pytest.raises(FeatvizError, match="no such file"):
        featviz.parse_target(f"sae:{tmp_path / 'nothing'}:1")
    with pytest.raises(FeatvizError, match="write sae:PATH:N"):
        featviz.parse_target(f"sae:{path}")


def test_cli_bad_sae_exits_2(model_dir, tmp_path, capsys):
    from featviz.cli.main import main
    rc = main(["activations", "--model", model_dir, "--target",
               f"sae:{tmp_path / 'missing'}:0", "hello"])
    err = capsys.readouterr().err
    assert rc == 2 and "no such file" in err and "Traceback" not in err


def test_gallery_dream_and_audit_of_a_feature(llama, tmp_path):
    """A feature is mined, dreamed, audited and shown like a neuron; its record and page
    name the SAE."""
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from conftest import word_corpus

    from featviz.analysis.audit import AuditConfig, audit
    from featviz.search.config import DreamConfig
    from featviz.site.gallery import GalleryConfig, build_gallery
    sae = make_sae("topk", llama.d_model, 24, "blocks.1.hook_resid_post", k=6)
    path = saved(sae, tmp_path / "sae")
    corpus = word_corpus(tmp_path / "c.txt", 0, 30, 30)
    fast = dict(length=4, batch=4, steps=4, swap_iters=3, children=6, k_grad=8, k_lm=8,
                hard_samples=2, caps=(5.0,), init_samples=8, beam_lams=())
    mine = MineConfig(window=16, max_tokens=600, k=4, cells=8, per_band=2, controls=3,
                      hist_bins=16, batch_size=8)
    ts = featviz.parse_targets(f"sae:{path}:0-1", llama) + \
        [featviz.parse_target(f"-sae:{path}:2@max", llama)]
    out = str(tmp_path / "g")
    build_gallery(llama, ts, GalleryConfig(mine=mine, dream=DreamConfig(**fast), corpus=corpus,
                                           cache_dir="", title="sae"), out_dir=out, progress=False)
    recs = [json.loads(x) for x in open(f"{out}/gallery.jsonl")]
    assert [r["target"] for r in recs] == [str(t) for t in ts]
    for r in recs:
        assert r["sae"][0]["architecture"] == "topk" and r["sae"][0]["d_sae"] == 24
        assert r["sae"][0]["hook"] == "blocks.1.hook_resid_post"
    assert recs[0]["logit_effect"]["top"]
    assert recs[2]["description"].startswith("minimised: -1 x (feature 2")
    assert recs[2]["stats"]["max"] <= 0          # -(a ReLU feature): the minimiser's view
    syn = recs[0]["synthetic"]["best"]
    t = featviz.parse_target(recs[0]["target"], llama)
    again = featviz.read_ids(llama, [t], syn["token_ids"])
    assert abs(again.reduced[str(t)] - syn["activation"]) < 1e-4      # verified in float32
    page = open(os.path.join(out, "index.html")).read()
    page = open(os.path.join(out, "targets", slug(recs[0]["target"]) + ".html")).read()
    assert "d_sae 24" in page and "blocks.1.hook_resid_post" in page
    rep = audit(llama, [ts[0]], AuditConfig(mine=mine, dream=DreamConfig(**fast), corpus=corpus,
                                             contexts=3, context_len=6, baseline=8, cache_dir=""),
                progress=False)
    checks = {c.name: c for c in rep.targets[0].checks}
    assert checks["path"].verdict in ("ok", "flag") and checks["path"].figures["layers"] == [0]


def test_dreaming_a_feature_on_jax_matches_its_verification(llama, tmp_path):
    pytest.importorskip("jax")
    from featviz.search.config import DreamConfig
    path = saved(make_sae("jumprelu", llama.d_model, 16, "blocks.1.hook_mlp_out"), tmp_path / "j")
    res = featviz.dream(llama, f"sae:{path}:3@max",
                        DreamConfig(length=4, batch=4, steps=3, swap_iters=2, children=4,
                                    k_grad=8, k_lm=8, hard_samples=2, caps=(5.0,),
                                    init_samples=8, beam_lams=(), backend="jax"), progress=False)
    t = featviz.parse_target(f"sae:{path}:3@max", llama)
    again, _ = evaluate_ids(llama, [t], res.best.token_ids)
    assert abs(float(again[0, 0]) - res.best.activation) < 1e-4


def test_a_retrained_sae_at_the_same_path_is_mined_again(llama, tmp_path):
    from featviz.mining.cache import mine_cached
    corpus = tmp_path / "c.txt"
    corpus.write_text((TEXT + " ") * 20)
    cfg = MineConfig(max_tokens=200, window=16, batch_size=8)
    path = saved(make_sae("standard", llama.d_model, 8, "blocks.1.hook_resid_post"), tmp_path / "s")
    ts = featviz.parse_targets(f"sae:{path}:0-7", llama)
    a, hit = mine_cached(llama, ts, str(corpus), cfg, cache_dir=str(tmp_path / "cache"),
                         progress=False)
    assert hit == 0
    _, hit = mine_cached(llama, ts, str(corpus), cfg, cache_dir=str(tmp_path / "cache"),
                         progress=False)
    assert hit == 8
    saved(make_sae("standard", llama.d_model, 8, "blocks.1.hook_resid_post", seed=9), path)
    os.utime(os.path.join(path, "sae_weights.safetensors"), (1, 1))   # "retrained" earlier
    b, hit = mine_cached(llama, ts, str(corpus), cfg, cache_dir=str(tmp_path / "cache"),
                         progress=False)
    assert hit == 0 and [r.max for r in a] != [r.max for r in b]


def test_cli_reads_a_feature(model_dir, tmp_path, capsys):
    from featviz.cli.main import main
    path = saved(make_sae("jumprelu", 32, 16, "blocks.1.hook_resid_post"), tmp_path / "j")
    rc = main(["activations", "--model", model_dir, "--target", f"sae:{path}:3",
               "--target", "blocks.1.hook_resid_post:4", "--json", "hello world"])
    out = capsys.readouterr().out
    assert rc == 0
    doc = json.loads(out)
    assert f"sae:{path}:3" in json.dumps(doc)

import numpy as np
import pytest
import torch
from reference import reference

import featviz
from featviz import FeatvizError, parse_target, parse_targets
from featviz.model.forward import run, with_bos
from featviz.targets.read import evaluate_ids, read_text

IDS = torch.tensor([5, 17, 42, 8, 99, 23, 61, 7, 150, 12])
TOL = 1e-5


def _read(handle, spec, ids=IDS):
    t = parse_target(spec, handle)
    full = with_bos(handle, ids)
    with torch.no_grad():
        caps, _ = run(handle, t.sites(), input_ids=full)
        return t.per_position(caps, handle)[0], t.evaluate(caps, handle)[0]


@pytest.mark.parametrize("layer", [0, 2])
def test_mlp_neuron_matches_weights(tiny, layer):
    ref = reference(tiny, layer, with_bos(tiny, IDS)[0])
    for n in (0, 7, tiny.d_mlp - 1):
        per, red = _read(tiny, f"mlp:{layer}:{n}")
        assert torch.allclose(per, ref["mlp_post"][:, n], atol=TOL)
        assert abs(red - ref["mlp_post"][-1, n]) < TOL


def test_head_norm_matches_weights(tiny):
    ref = reference(tiny, 1, with_bos(tiny, IDS)[0])
    for h in range(tiny.n_heads):
        per, _ = _read(tiny, f"head:1:{h}")
        assert torch.allclose(per, ref["z"][:, h].norm(dim=-1), atol=TOL)


def test_attention_probability_matches_weights(tiny):
    ref = reference(tiny, 2, with_bos(tiny, IDS)[0])
    per, red = _read(tiny, "attn:2:3:0")
    assert torch.allclose(per, ref["pattern"][3, :, 0], atol=TOL)
    per, red = _read(tiny, "attn:2:1:-1@4")     # key = last token, query position 4
    assert abs(red - ref["pattern"][1, 4, -1]) < TOL     # causal: 0
    per, red = _read(tiny, "attn:2:1:2@max")
    assert abs(red - ref["pattern"][1, 1:, 2].max()) < TOL


def test_resid_basis_and_direction(tiny, tmp_path):
    ref = reference(tiny, 1, with_bos(tiny, IDS)[0])
    per, _ = _read(tiny, "resid:1:5")
    assert torch.allclose(per, ref["resid_post"][:, 5], atol=TOL)
    d = np.random.default_rng(0).normal(size=tiny.d_model).astype(np.float32)
    np.save(tmp_path / "dir.npy", d)
    per, red = _read(tiny, f"resid:1:{tmp_path / 'dir.npy'}@mean")
    unit = torch.from_numpy(d / np.linalg.norm(d))           # the direction is normalised
    expect = ref["resid_post"] @ unit
    assert torch.allclose(per, expect, atol=1e-4)
    assert abs(red - expect[1:].mean()) < 1e-4
    from safetensors.numpy import save_file
    save_file({"direction": d}, str(tmp_path / "dir.safetensors"))
    _, red2 = _read(tiny, f"resid:1:{tmp_path / 'dir.safetensors'}@mean")
    assert abs(red2 - red) < 1e-6


def test_direction_is_normalised_and_its_norm_recorded(tiny, tmp_path):
    """A direction file's scale must not change values or the logit effect; the norm of
    the stored vector is reported in the target's description."""
    from featviz.targets.effects import logit_effect
    d = np.random.default_rng(1).normal(size=tiny.d_model).astype(np.float32)
    np.save(tmp_path / "a.npy", d)
    np.save(tmp_path / "b.npy", 7 * d)
    pa, ra = _read(tiny, f"resid:1:{tmp_path / 'a.npy'}@max")
    pb, rb = _read(tiny, f"resid:1:{tmp_path / 'b.npy'}@max")
    assert torch.allclose(pa, pb, atol=1e-5) and abs(ra - rb) < 1e-5
    ta = featviz.parse_target(f"resid:1:{tmp_path / 'a.npy'}", tiny)
    tb = featviz.parse_target(f"resid:1:{tmp_path / 'b.npy'}", tiny)
    ea, eb = logit_effect(tiny, ta, 5), logit_effect(tiny, tb, 5)
    assert [t for t, _ in ea["top"]] == [t for t, _ in eb["top"]]
    np.testing.assert_allclose([v for _, v in ea["top"]], [v for _, v in eb["top"]], rtol=1e-4)
    n = float(np.linalg.norm(d))
    assert tb.direction_norm(tiny) == pytest.approx(7 * n, rel=1e-5)
    assert f"norm {7 * n:.6g}" in tb.describe(tiny) and "unit direction" in tb.describe(tiny)
    np.save(tmp_path / "zero.npy", np.zeros(tiny.d_model, np.float32))
    with pytest.raises(FeatvizError, match="zero vector"):
        featviz.parse_target(f"resid:1:{tmp_path / 'zero.npy'}", tiny)


def test_gpt2_logit_effect_uses_the_centred_direction(gpt2, tmp_path):
    """LayerNorm removes a direction's mean before anything reaches the logits: the all-ones
    direction has no direct logit effect, and adding a constant changes nothing."""
    from featviz.targets.effects import logit_effect
    np.save(tmp_path / "ones.npy", np.ones(gpt2.d_model, np.float32))
    eff = logit_effect(gpt2, featviz.parse_target(f"resid:2:{tmp_path / 'ones.npy'}", gpt2), 5)
    assert max(abs(v) for _, v in eff["top"] + eff["bottom"]) < 1e-4
    mlp = featviz.parse_target("mlp:1:3", gpt2)
    w = gpt2.mlp_out_proj(1).weight.detach().float()[3]
    lnf = gpt2.model.transformer.ln_f.weight.detach().float()
    raw = (gpt2.unembedding.detach().float() @ ((w - w.mean()) * lnf))
    raw[list(gpt2.tokenizer.all_special_ids)] = -float("inf")
    e = logit_effect(gpt2, mlp, 3)
    assert e["top"][0][1] == pytest.approx(float(raw.max()), rel=1e-4)


def test_reductions(tiny):
    per, last = _read(tiny, "mlp:1:3")
    _, mx = _read(tiny, "mlp:1:3@max")
    _, mean = _read(tiny, "mlp:1:3@mean")
    _, at2 = _read(tiny, "mlp:1:3@2")
    _, atm2 = _read(tiny, "mlp:1:3@-2")
    assert last == per[-1] and mx == per[1:].max() and at2 == per[2] and atm2 == per[-2]
    assert abs(mean - per[1:].mean()) < 1e-7


def test_composition_is_weighted_sum(tiny):
    a, b = parse_target("mlp:1:3", tiny), parse_target("head:0:1", tiny)
    combo = a + 0.5 * b - parse_target("mlp:2:4", tiny)
    vals, _ = evaluate_ids(tiny, [a, b, parse_target("mlp:2:4", tiny), combo], IDS[None])
    assert abs(vals[3, 0] - (vals[0, 0] + 0.5 * vals[1, 0] - vals[2, 0])) < 1e-5
    assert combo.max_layer == 2 and len(combo.terms()) == 3


def test_tl_aliases(tiny):
    assert parse_target("blocks.2.mlp.hook_post:7") == parse_target("mlp:2:7")
    assert parse_target("blocks.1.attn.hook_z:2@max") == parse_target("head:1:2@max")
    assert parse_target("blocks.1.hook_resid_post:3") == parse_target("resid:1:3")


def test_forward_stops_after_deepest_layer(tiny):
    seen = []
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: seen.append(i))
             for i, b in enumerate(tiny.blocks)]
    try:
        t = parse_target("mlp:1:0", tiny)
        run(tiny, t.sites(), input_ids=with_bos(tiny, IDS))
    finally:
        for h in hooks:
            h.remove()
    assert seen == [0, 1]


def test_several_targets_one_pass(tiny):
    ts = [parse_target(s, tiny) for s in ("mlp:0:1", "head:2:0", "attn:1:1:0")]
    calls = []
    h = tiny.model.register_forward_hook(lambda m, a, o: calls.append(1))
    try:
        vals, _ = evaluate_ids(tiny, ts, IDS[None])
    finally:
        h.remove()
    assert vals.shape == (3, 1)
    # stopped early at the last block, so the top-level hook never completes: 0 calls
    assert calls == []


def test_expand_range():
    atoms = parse_targets("mlp:6:0-63")
    assert len(atoms) == 64 and atoms[-1].index == 63


BAD = [
    ("", "empty target"),
    ("mlp", "takes 2 numbers"),
    ("mlp:1", "takes 2 numbers"),
    ("mlp:1:2:3", "takes 2 numbers"),
    ("neuron:1:2", "unknown kind"),
    ("mlp:a:2", "layer 'a' is not an integer"),
    ("mlp:1:x", "neuron 'x' is not an integer"),
    ("mlp:1:2@top", "unknown reduction"),
    ("attn:1:2", "takes 3 numbers"),
    ("attn:1:2:k", "key position 'k' is not an integer"),
    ("mlp:1:5-2", "empty range"),
]


@pytest.mark.parametrize("spec,msg", BAD)
def test_bad_specs(spec, msg):
    with pytest.raises(FeatvizError, match=msg):
        parse_targets(spec)


OUT_OF_RANGE = [
    ("mlp:3:0", "layer 3 is out of range; this model has layers 0-2"),
    ("mlp:-1:0", "layer -1 is out of range"),
    ("mlp:0:48", "neuron 48 is out of range; layer 0 has neurons 0-47"),
    ("head:0:4", "head 4 is out of range; this model has heads 0-3"),
    ("attn:1:9:0", "head 9 is out of range"),
    ("resid:0:32", "dimension 32 is out of range; the residual stream has dimensions 0-31"),
    ("resid:0:missing.npy", "does not exist"),
]


@pytest.mark.parametrize("spec,msg", OUT_OF_RANGE)
def test_out_of_range(llama, spec, msg):
    with pytest.raises(FeatvizError, match=msg):
        parse_target(spec, llama)


def test_position_out_of_range(llama):
    with pytest.raises(FeatvizError, match="position 40 is outside"):
        _read(llama, "mlp:0:1@40")


def test_read_text_one_pass(llama):
    ts = [parse_target("mlp:0:1", llama), parse_target("head:1:0@max", llama)]
    r = read_text(llama, ts, "the cat sat")
    assert r.tokens[0] == "<bos>" and len(r.values["mlp:0:1"]) == len(r.tokens)
    assert r.xe is not None and r.xe > 0


def test_unsupported_architecture(tokenizer):
    from transformers import BertConfig, BertForMaskedLM
    m = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=32))
    with pytest.raises(FeatvizError, match="unsupported architecture 'bert'"):
        featviz.wrap_model(m, tokenizer)


def test_bad_direction_files(llama, tmp_path):
    np.save(tmp_path / "short.npy", np.zeros(3, np.float32))
    with pytest.raises(FeatvizError, match="has 3 values; the residual stream has 32"):
        parse_target(f"resid:0:{tmp_path / 'short.npy'}", llama)
    (tmp_path / "d.txt").write_text("1 2 3")
    with pytest.raises(FeatvizError, match=r"must end in \.npy or \.safetensors"):
        parse_target(f"resid:0:{tmp_path / 'd.txt'}", llama)


def test_target_algebra_from_a_spec(tiny):
    a, b = parse_target("mlp:1:5", tiny), parse_target("mlp:1:6", tiny)
    [combo] = parse_targets("mlp:1:5 - 0.5*mlp:1:6", tiny)
    [neg] = parse_targets("-mlp:1:5", tiny)
    text = "The cat sat on the mat"
    r = read_text(tiny, [a, b, combo, neg], text)
    va, vb = np.array(r.values["mlp:1:5"]), np.array(r.values["mlp:1:6"])
    np.testing.assert_allclose(r.values[str(combo)], va - 0.5 * vb, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(r.values[str(neg)], -va, rtol=1e-6, atol=1e-8)
    for t in (combo, neg):                            # a sum's name parses back to the sum
        assert str(parse_target(str(t), tiny)) == str(t)
    assert [w for w, _ in combo.terms()] == [1.0, -0.5]


@pytest.mark.parametrize("spec,msg", [
    ("mlp:1:0-3 + mlp:1:4", "cannot be a term of a sum"),
    ("2*", "is not [-][W*]TARGET"),
    ("mlp:1:5 - 0.5*nope:1:2", "unknown kind 'nope'"),
])
def test_target_algebra_errors(spec, msg):
    with pytest.raises(FeatvizError, match=msg.replace("[", r"\[").replace("*", r"\*")):
        parse_targets(spec)


def test_a_minimised_target_mines_the_most_negative_windows(tiny, tmp_path):
    from conftest import word_corpus

    from featviz.mining.miner import MineConfig, mine
    src = word_corpus(tmp_path / "c.txt", 0, 30, 30)
    cfg = MineConfig(window=16, max_tokens=800, k=3, batch_size=8)
    plain, minus = mine(tiny, parse_targets("mlp:1:5", tiny) + parse_targets("-mlp:1:5", tiny),
                        cfg, source=src, progress=False)
    assert minus.max == pytest.approx(-plain.min, rel=1e-5)
    assert minus.top[0].value == pytest.approx(-plain.min, rel=1e-5)

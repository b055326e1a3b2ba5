"""The kind table: one reading per kind, the same in torch and JAX."""
import numpy as np
import pytest
import torch

import featviz
from featviz.model.forward import run
from featviz.targets.kinds import KINDS, TORCH_OPS, Read, head_norms, reduce_with
from featviz.targets.read import evaluate_ids


def test_head_norms_is_the_norm_of_each_head():
    x = torch.randn(2, 5, 3 * 4)
    want = torch.stack([x[..., h * 4:(h + 1) * 4].norm(dim=-1) for h in range(3)], -1)
    torch.testing.assert_close(head_norms(x, 3, 4), want)


def test_every_kind_reads_the_documented_slice(llama):
    ids = torch.tensor([[llama.bos_id, 5, 9, 11, 7]])
    for spec in ("mlp:1:3", "head:1:2", "attn:1:1:2", "resid:1:4"):
        a = featviz.parse_target(spec, llama)
        caps, _ = run(llama, a.sites(), input_ids=ids)
        x = caps[a.site]
        got = a.per_position(caps, llama)
        want = {"mlp": lambda: x[..., 3], "resid": lambda: x[..., 4],
                "attn": lambda: x[:, 1, :, 2],
                "head": lambda: x.reshape(1, 5, llama.n_heads, llama.head_dim)[:, :, 2].norm(dim=-1)}
        torch.testing.assert_close(got, want[a.kind]())


def test_a_key_the_causal_mask_hides_reads_zero():
    x = torch.rand(2, 3, 4, 4)                     # (batch, heads, queries, keys present)
    out = KINDS["attn"].read(x, Read(index=1, key=6), TORCH_OPS)
    assert out.shape == (2, 4) and not out.any()


def test_torch_and_jax_read_through_the_same_table():
    jnp = pytest.importorskip("jax.numpy")
    from featviz.backends.jax.read import jax_ops
    x = np.random.default_rng(0).standard_normal((2, 5, 12)).astype(np.float32)
    for kind, r in (("mlp", Read(index=3)), ("head", Read(index=1, n_heads=3, head_dim=4)),
                    ("resid", Read(index=None, direction=np.ones(12, np.float32) / 12 ** 0.5))):
        rt = Read(r.index, r.key, None if r.direction is None else torch.from_numpy(r.direction),
                  r.n_heads, r.head_dim)
        t = KINDS[kind].read(torch.from_numpy(x), rt, TORCH_OPS).numpy()
        j = np.asarray(KINDS[kind].read(jnp.asarray(x), r, jax_ops()))
        np.testing.assert_allclose(t, j, rtol=1e-5, atol=1e-6)
    v = np.random.default_rng(1).standard_normal((2, 6)).astype(np.float32)
    for how, i in (("at", 2), ("max", (1, 4)), ("mean", (1, 6))):
        np.testing.assert_allclose(reduce_with(how, i, torch.from_numpy(v)).numpy(),
                                   np.asarray(reduce_with(how, i, jnp.asarray(v), jax_ops())),
                                   rtol=1e-6)


def test_residual_hooks_add_up_as_transformer_lens_defines_them(tiny):
    """hook_resid_pre + hook_attn_out = hook_resid_mid; + hook_mlp_out = hook_resid_post;
    resid_pre of block L is resid_post of L - 1; attn_out is W_O z (+ b_O); mlp_out is the
    MLP's down projection of mlp.hook_post."""
    from featviz.model.forward import (
        ATTN_OUT,
        MLP_OUT,
        MLP_POST,
        RESID_MID,
        RESID_POST,
        RESID_PRE,
        Z,
    )
    ids = torch.tensor([[tiny.bos_id, 5, 9, 11, 7, 3]])
    sites = {(s, layer) for s in (RESID_PRE, RESID_MID, RESID_POST, ATTN_OUT, MLP_OUT, Z,
                                  MLP_POST) for layer in (1, 2)}
    with torch.no_grad():
        c, _ = run(tiny, sites, input_ids=ids)
        for layer in (1, 2):
            torch.testing.assert_close(c[RESID_PRE, layer] + c[ATTN_OUT, layer], c[RESID_MID, layer])
            torch.testing.assert_close(c[RESID_MID, layer] + c[MLP_OUT, layer], c[RESID_POST, layer])
            torch.testing.assert_close(tiny.attn_out_proj(layer)(c[Z, layer]), c[ATTN_OUT, layer])
            torch.testing.assert_close(tiny.mlp_out_proj(layer)(c[MLP_POST, layer]),
                                       c[MLP_OUT, layer])
        torch.testing.assert_close(c[RESID_PRE, 2], c[RESID_POST, 1])


TL_NAMES = [  # (TransformerLens name or get_act_name shorthand, featviz spec)
    ("blocks.1.hook_resid_pre:4", "resid_pre:1:4"), ("resid_pre1:4", "resid_pre:1:4"),
    ("blocks.2.hook_resid_mid:5@max", "resid_mid:2:5@max"), ("resid_mid2:5@max", "resid_mid:2:5@max"),
    ("blocks.1.hook_resid_post:6", "resid:1:6"), ("resid_post1:6", "resid:1:6"),
    ("blocks.0.hook_attn_out:7", "attn_out:0:7"), ("attn_out0:7", "attn_out:0:7"),
    ("blocks.2.hook_mlp_out:8@mean", "mlp_out:2:8@mean"), ("mlp_out2:8@mean", "mlp_out:2:8@mean"),
    ("blocks.1.mlp.hook_post:3", "mlp:1:3"), ("post1:3", "mlp:1:3"),
    ("blocks.2.attn.hook_z:1", "head:2:1"), ("z2:1", "head:2:1"),
    ("blocks.1.attn.hook_pattern:2:0", "attn:1:2:0"), ("pattern1:2:0", "attn:1:2:0"),
    ("blocks.2.attn.hook_z:1:3", "z:2:1:3"), ("z2:1:3", "z:2:1:3"),
    ("blocks.1.attn.hook_q:3:2", "q:1:3:2"), ("q1:3:2", "q:1:3:2"),
    ("blocks.1.attn.hook_k:1:2@max", "k:1:1:2@max"), ("k1:1:2@max", "k:1:1:2@max"),
    ("blocks.2.attn.hook_v:0:5", "v:2:0:5"), ("v2:0:5", "v:2:0:5"),
    ("blocks.1.mlp.hook_pre:4", "mlp_pre:1:4"), ("pre1:4", "mlp_pre:1:4"),
    ("blocks.1.mlp.hook_pre_linear:4", "mlp_pre_linear:1:4"), ("pre_linear1:4", "mlp_pre_linear:1:4"),
    ("blocks.2.attn.hook_attn_scores:1:0", "scores:2:1:0"), ("attn_scores2:1:0", "scores:2:1:0"),
    ("ln_final.hook_normalized:7@max", "ln_final:7@max"),
]


@pytest.mark.parametrize("tl,spec", TL_NAMES)
def test_transformer_lens_names_map_onto_kinds(llama, tl, spec):
    assert featviz.parse_target(tl, llama) == featviz.parse_target(spec, llama)


def test_every_residual_kind_reads_its_own_hook(tiny):
    from featviz.model.forward import ATTN_OUT, MLP_OUT, RESID_MID, RESID_PRE
    ids = torch.tensor([[tiny.bos_id, 5, 9, 11, 7]])
    for kind, site in (("resid_pre", RESID_PRE), ("resid_mid", RESID_MID),
                       ("attn_out", ATTN_OUT), ("mlp_out", MLP_OUT)):
        a = featviz.parse_target(f"{kind}:1:4", tiny)
        with torch.no_grad():
            caps, _ = run(tiny, {(site, 1)}, input_ids=ids)
            torch.testing.assert_close(a.per_position(caps, tiny), caps[site, 1][..., 4])
        assert featviz.parse_target(f"{kind}:1:4@max").name == f"{kind}:1:4@max"
    with pytest.raises(featviz.FeatvizError, match="dimensions 0-31"):
        featviz.parse_target("mlp_out:1:32", tiny)


def test_attention_and_mlp_input_hooks_read_what_transformer_lens_names(tiny):
    """attn.hook_q/k/v: the projections of ln1(resid_pre) (before RoPE), per head and
    dimension; attn.hook_z:H:D a dimension of z; mlp.hook_pre the gate (or GPT-2's c_fc) of
    ln2(resid_mid), mlp.hook_pre_linear the gated MLP's linear branch, and mlp.hook_post
    what they make."""
    from featviz.model.forward import MLP_POST, MLP_PRE, RESID_MID, RESID_PRE, Z
    ids = torch.tensor([[tiny.bos_id, 5, 9, 11, 7, 3]])
    llama = tiny.arch == "llama"
    block, attn = tiny.blocks[1], tiny.attn_module(1)
    ln1 = block.input_layernorm if llama else block.ln_1
    specs = ["q:1:2:3", "k:1:1:5", "v:1:0:7", "z:1:3:2", "mlp_pre:1:4", "head:1:3", "mlp:1:4"]
    if llama:
        specs.append("mlp_pre_linear:1:4")
    ts = [featviz.parse_target(s, tiny) for s in specs]
    sites = {t.site for t in ts} | {(RESID_PRE, 1), (RESID_MID, 1)}
    with torch.no_grad():
        c, _ = run(tiny, sites, input_ids=ids)
        h = ln1(c[RESID_PRE, 1])
        hd = tiny.head_dim
        if llama:
            proj = {w: getattr(attn, f"{w}_proj")(h) for w in "qkv"}
        else:
            proj = dict(zip("qkv", attn.c_attn(h).split(tiny.d_model, dim=-1)))
        want = {"q:1:2:3": proj["q"][..., 2 * hd + 3], "k:1:1:5": proj["k"][..., 1 * hd + 5],
                "v:1:0:7": proj["v"][..., 7], "z:1:3:2": c[Z, 1][..., 3 * hd + 2]}
        h2 = tiny.ln2(1)(c[RESID_MID, 1])
        mlp = tiny.mlp_module(1)
        pre = mlp.gate_proj(h2) if llama else mlp.c_fc(h2)
        want["mlp_pre:1:4"] = pre[..., 4]
        if llama:
            want["mlp_pre_linear:1:4"] = mlp.up_proj(h2)[..., 4]
            post = mlp.act_fn(pre) * mlp.up_proj(h2)
        else:
            post = mlp.act(pre)
        torch.testing.assert_close(post, c[MLP_POST, 1])
        torch.testing.assert_close(c[MLP_PRE, 1], pre)
        for t in ts:
            if str(t) in want:
                torch.testing.assert_close(t.per_position(c, tiny), want[str(t)], msg=str(t))
        # the miner's gathered read (head norm and z dimension share a hook) agrees
        from featviz.mining.miner import read_all
        together = read_all(c, ts, tiny)
        for j, t in enumerate(ts):
            torch.testing.assert_close(together[j], t.per_position(c, tiny), msg=str(t))


def test_head_dimension_and_gated_errors(llama, gpt2):
    with pytest.raises(featviz.FeatvizError, match="heads 0-1"):
        featviz.parse_target("k:1:2:0", llama)                   # 2 KV heads
    with pytest.raises(featviz.FeatvizError, match="dimensions 0-7"):
        featviz.parse_target("q:1:0:8", llama)
    with pytest.raises(featviz.FeatvizError, match="only in gated MLPs"):
        featviz.parse_target("mlp_pre_linear:1:0", gpt2)


def test_attention_scores_and_the_final_norm(tiny):
    """attn.hook_attn_scores: softmax over the keys a query sees gives hook_pattern;
    ln_final.hook_normalized times the final norm's weight (plus bias) gives the logits."""
    from featviz.model.forward import LN_FINAL, PATTERN, SCORES
    ids = torch.tensor([[tiny.bos_id, 5, 9, 11, 7, 3]])
    with torch.no_grad():
        c, _ = run(tiny, {(SCORES, 1), (PATTERN, 1), (LN_FINAL, -1)}, input_ids=ids)
        _, logits = run(tiny, set(), input_ids=ids, need_logits=True)
    s = c[SCORES, 1]
    seen = torch.ones(6, 6, dtype=torch.bool).tril()
    assert not s.masked_select(~seen).any()                      # 0 where the mask hides a key
    torch.testing.assert_close(torch.softmax(s.masked_fill(~seen, -torch.inf), -1), c[PATTERN, 1])
    norm = tiny.final_norm
    out = c[LN_FINAL, -1] * norm.weight + (norm.bias if getattr(norm, "bias", None) is not None else 0)
    torch.testing.assert_close(out @ tiny.unembedding.T, logits, atol=1e-5, rtol=1e-5)
    t = featviz.parse_target("scores:1:2:1@max", tiny)
    torch.testing.assert_close(t.per_position(c, tiny), s[:, 2, :, 1])
    t = featviz.parse_target("ln_final:4", tiny)
    torch.testing.assert_close(t.per_position(c, tiny), c[LN_FINAL, -1][..., 4])
    assert t.depth(tiny) == tiny.n_layers - 1 and t.describe(tiny).startswith("final norm")


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_new_kinds_dream_and_verify(llama, backend):
    """Every hook kind runs through the whole search (model samples, beams on the KV cache,
    relaxation, swaps) and its reported value is the float32 re-reading of the text."""
    if backend == "jax":
        pytest.importorskip("jax")
    from featviz.search.config import DreamConfig
    cfg = DreamConfig(length=4, batch=4, steps=3, swap_iters=2, children=4, k_grad=8, k_lm=8,
                      hard_samples=2, caps=(5.0,), init_samples=8, beam_lams=(0.5,),
                      backend=backend)
    for spec in ("scores:1:2:1@max", "ln_final:3", "q:2:1:0", "mlp_pre_linear:1:5@mean",
                 "resid_mid:1:4 - 0.5*attn_out:1:4"):
        res = featviz.dream(llama, spec, cfg, progress=False)
        t = featviz.parse_target(spec, llama)
        again, _ = evaluate_ids(llama, [t], res.best.token_ids)
        assert abs(float(again[0, 0]) - res.best.activation) < 1e-4, spec


def test_blocked_topk_picks_the_k_entries_torch_topk_picks():
    """The mining path's top-k (blocks, then the few candidates in the best blocks) chooses
    the same k entries as torch.topk: on plain scores, on ties at the k-th value (rows
    redone by torch.topk), on NaN and infinities, on any leading shape, and on sizes the
    blocks do not fit (torch.topk itself)."""
    import torch

    from featviz.targets.kinds import blocked_topk, topk_relu_entries

    g = torch.Generator().manual_seed(0)
    h = torch.randn(300, 4608, generator=g)
    odd = h.clone()
    odd[3, 100], odd[5], odd[6, 7] = float("nan"), -torch.inf, torch.inf
    cases = [(h, 64), (h, 8), (h.view(3, 100, 4608), 32), (torch.round(h * 2) / 2, 64),
             (torch.zeros(4, 4608), 64), (odd, 64), (torch.randn(5, 1000, generator=g), 10),
             (torch.randn(0, 4608, generator=g), 64)]
    for v, k in cases:
        ref = v.topk(k, dim=-1)
        idx, val = blocked_topk(v, k)
        assert idx.shape == ref.indices.shape
        assert torch.equal(idx.sort(-1).values, ref.indices.sort(-1).values)
        assert torch.equal(v.gather(-1, idx).nan_to_num(), val.nan_to_num())
    i, r = topk_relu_entries(h, 64)
    assert torch.equal(i.sort(-1).values, h.topk(64).indices.sort(-1).values)
    assert (r >= 0).all()

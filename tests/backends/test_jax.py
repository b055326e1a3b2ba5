"""The JAX backend against the torch backend: same readings, same relaxation step."""
import dataclasses

import numpy as np
import pytest
import torch

import featviz
from featviz import FeatvizError
from featviz.backends.jax.forward import embed_ids, forward, to_jax
from featviz.backends.jax.read import directions_for, evaluate, per_position
from featviz.backends.jax.relax import (
    hash_uniform,
    make_objective,
    make_step,
    relax_jax,
    step_key,
)
from featviz.backends.torch.score import forward_scores
from featviz.model.forward import run, with_bos
from featviz.model.vocab import readable_mask

jax = pytest.importorskip("jax")
jnp = jax.numpy

SPECS = ["mlp:1:3", "mlp:2:7@max", "head:1:2", "head:2:3@mean", "attn:1:1:0", "attn:2:3:-2@3",
         "resid:0:5", "resid:2:9@max", "resid_pre:1:3", "resid_mid:2:4@max", "attn_out:1:5",
         "mlp_out:2:6@mean", "resid_pre:0:2", "mlp_pre:1:3", "q:1:2:3", "k:2:1:0@max",
         "v:1:1:5", "z:2:3:1@mean", "scores:1:2:0", "scores:2:3:-2@3", "ln_final:4",
         "ln_final:5@max"]


def readings_agree(h, specs, text, tol=1e-4, tmp_path=None):
    ids = with_bos(h, h.encode(text))
    jm = to_jax(h)
    ts = [featviz.parse_target(s, h) for s in specs]
    if tmp_path is not None:
        d = np.random.default_rng(0).standard_normal(h.d_model).astype(np.float32)
        np.save(tmp_path / "d.npy", d)
        ts.append(featviz.parse_target(f"resid:1:{tmp_path / 'd.npy'}@max", h))
    for t in ts:
        with torch.no_grad():
            caps, _ = run(h, t.sites(), input_ids=ids)
            want = t.per_position(caps, h).float().numpy()
            want_r = t.evaluate(caps, h).float().numpy()
        jc, _ = forward(jm, embed_ids(jm, ids.numpy()), sites=t.sites())
        dirs = directions_for(t, h)
        got = np.asarray(per_position(t, jc, jm, dirs))
        got_r = np.asarray(evaluate(t, jc, jm, dirs))
        np.testing.assert_allclose(got, want, atol=tol, rtol=1e-4, err_msg=str(t))
        np.testing.assert_allclose(got_r, want_r, atol=tol, rtol=1e-4, err_msg=str(t))
    with torch.no_grad():
        _, want_logits = run(h, set(), input_ids=ids, need_logits=True)
    _, logits = forward(jm, embed_ids(jm, ids.numpy()), need_logits=True)
    np.testing.assert_allclose(np.asarray(logits), want_logits.numpy(), atol=tol * 10, rtol=1e-4)


@pytest.mark.parametrize("P,logits", [(1, False), (1, (0, 6)), (3, (2, 6)), (3, True),
                                       (3, (4, 7))])
def test_forward_after_a_shared_start_is_the_same_run(tiny, P, logits):
    """BOS + prefix run once at batch 1, the rows after them: same captures, same logits."""
    from featviz.backends.jax.forward import forward_after, forward_raw
    from featviz.model.forward import (
        ATTN_OUT,
        LN_FINAL,
        MLP_OUT,
        MLP_POST,
        PATTERN,
        RESID_MID,
        RESID_POST,
        SCORES,
        Z,
    )
    jm = to_jax(tiny)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, tiny.vocab_size, (3, 8))
    ids[:, :P] = ids[0, :P]                                       # a start all rows share
    x = embed_ids(jm, ids)
    sites = frozenset({(MLP_POST, 1), (PATTERN, 2), (Z, 0), (RESID_POST, 2), (RESID_MID, 1),
                       (ATTN_OUT, 0), (MLP_OUT, 2), (SCORES, 1), (LN_FINAL, -1)})
    args = (jm.spec, jm.params, jm.inv_freq, jm.rope_scale)
    want_c, want_l = forward_raw(*args, x, sites, logits)
    got_c, got_l = forward_after(*args, x[:1, :P], x[:, P:], sites, logits)
    assert set(got_c) == set(want_c)
    for k in want_c:
        np.testing.assert_allclose(np.asarray(got_c[k]), np.asarray(want_c[k]), atol=1e-5,
                                   err_msg=str(k))
    if logits is False:
        assert got_l is None and want_l is None
    else:
        np.testing.assert_allclose(np.asarray(got_l), np.asarray(want_l), atol=1e-4)


def test_every_target_kind_reads_the_same(tiny, tmp_path):
    specs = SPECS + (["mlp_pre_linear:2:4@max"] if tiny.arch == "llama" else [])
    readings_agree(tiny, specs, "The quick brown fox jumps over the lazy dog.", tmp_path=tmp_path)


@pytest.mark.slow
def test_embedded_model_reads_the_same(smollm, tmp_path):
    readings_agree(smollm, ["mlp:6:308", "mlp:27:192@max", "head:8:3", "attn:12:2:0",
                            "resid:20:100@mean"], "The Eiffel Tower is in Paris, France.",
                   tol=2e-4, tmp_path=tmp_path)


def _torch_objective(h, t, theta, noise, tau, lam, cap, mask, n, hard, pre=None, suf=()):
    bias = torch.where(mask, 0.0, -1e9)
    g = -torch.log(-torch.log(noise.clamp(1e-10, 1.0)))
    y = torch.softmax((theta + bias + g) / tau, -1)
    if hard:
        y = torch.zeros_like(y).scatter_(-1, y.argmax(-1, keepdim=True), 1.0) + y - y.detach()
    E = h.embedding
    pre = [h.bos_id] if pre is None else pre
    B = theta.shape[0]
    parts = [E[torch.tensor(pre)][None].expand(B, -1, -1), y @ E]
    if suf:
        parts.append(E[torch.tensor(list(suf))][None].expand(B, -1, -1))
    score, act, xe, _ = forward_scores(h, t, torch.cat(parts, 1), y, len(pre), lam, cap)
    return score


@pytest.mark.parametrize("hard,spec,pre,suf", [(False, "mlp:2:4", 0, 0), (True, "mlp:2:4", 0, 0),
                                              (True, "head:1:2@max", 2, 1),
                                              (False, "attn:2:3:1", 1, 2)])
def test_one_relaxation_step_matches_torch(tiny, hard, spec, pre, suf):
    h = tiny
    t = featviz.parse_target(spec, h)
    pre = [h.bos_id] + [7 + i for i in range(pre)]              # BOS + a fixed prefix
    suf = [11 + i for i in range(suf)]
    B, n, V = 4, 5, h.vocab_size
    mask = readable_mask(h)
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(B, n, V, generator=g)
    key = np.uint32(step_key(3, 7))
    noise = torch.from_numpy(np.array(hash_uniform(key, (B, n, V))))   # what the step draws
    lam = torch.tensor([0.0, 0.1, 0.5, 0.0])
    cap = torch.tensor([np.inf, np.inf, np.inf, 5.0])
    tau = 0.7
    jm = to_jax(h)
    obj = make_objective(jm, t, mask.numpy(), lam.numpy(), cap.numpy(), prefix_ids=pre,
                         suffix_ids=suf, n=n, hard=hard)
    _, (js, _, _, _) = obj(jm.params, jnp.asarray(theta.numpy()), jnp.asarray(noise.numpy()), tau)
    th = theta.clone().requires_grad_(True)
    ts = _torch_objective(h, t, th, noise, tau, lam, cap, mask, n, hard, pre, suf)
    np.testing.assert_allclose(np.asarray(js), ts.detach().numpy(), atol=1e-3, rtol=1e-4)
    # one Adam step each, from the same theta and noise
    opt = torch.optim.Adam([th], lr=0.3)
    (-ts.sum()).backward()
    opt.step()
    step, init = make_step(jm, t, mask.numpy(), lam.numpy(), cap.numpy(), prefix_ids=pre,
                           suffix_ids=suf, n=n, hard=hard, lr=0.3)
    jt = jnp.asarray(theta.numpy())
    jt2, _, _, _, _ = step(jm.params, jt, init(jt), key, jnp.float32(tau))
    # Adam's first update is lr * g / (|g| + eps): ill-conditioned where g is ~eps, so
    # theta is compared where the gradient is not vanishingly small
    big = th.grad.abs().numpy() > 1e-5
    np.testing.assert_allclose(np.asarray(jt2)[big], th.detach().numpy()[big], atol=1e-3)
    _, (js2, _, _, _) = obj(jm.params, jt2, jnp.asarray(noise.numpy()), tau)
    ts2 = _torch_objective(h, t, th.detach(), noise, tau, lam, cap, mask, n, hard, pre, suf)
    np.testing.assert_allclose(np.asarray(js2), ts2.numpy(), atol=1e-3, rtol=1e-3)


def test_the_loop_compiles_once(llama):
    t = featviz.parse_target("head:1:0", llama)
    mask = readable_mask(llama)
    theta = torch.zeros(3, 4, llama.vocab_size)
    lam = torch.tensor([0.0, 0.2, 0.0])
    cap = torch.tensor([np.inf, np.inf, 6.0])
    out, trace, step = relax_jax(llama, t, theta, mask, lam, cap, steps=6, seconds=None, lr=0.3,
                                 tau0=2.0, tau1=0.2, hard=True, seed=0, prefix_ids=[llama.bos_id],
                                 suffix_ids=[])
    assert trace.steps == 6 and out.shape == theta.shape and torch.isfinite(out).all()
    compiled = step._cache_size()
    # temperature and noise key are arguments: more steps, and another head of the same
    # layer (its index is an argument too), compile nothing new
    for spec, steps in (("head:1:0", 9), ("head:1:1", 4)):
        _, trace, again = relax_jax(llama, featviz.parse_target(spec, llama), theta, mask, lam, cap,
                                    steps=steps, seconds=None, lr=0.3, tau0=2.0, tau1=0.2,
                                    hard=True, seed=1, prefix_ids=[llama.bos_id], suffix_ids=[])
        assert trace.steps == steps and again.compiled is step.compiled
    assert step._cache_size() == compiled


def test_hash_noise_is_uniform_and_independent():
    u = np.asarray(hash_uniform(np.uint32(step_key(0, 0)), (64, 4096)))
    v = np.asarray(hash_uniform(np.uint32(step_key(0, 1)), (64, 4096)))
    w = np.asarray(hash_uniform(np.uint32(step_key(1, 0)), (64, 4096)))
    assert 0 < u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.002
    counts = np.histogram(u, 16, range=(0, 1))[0] / u.size
    assert np.abs(counts - 1 / 16).max() < 0.005
    for other in (v, w, u.ravel()[1:]):
        assert abs(np.corrcoef(u.ravel()[:other.size], other.ravel())[0, 1]) < 0.01
    np.testing.assert_array_equal(u, np.asarray(hash_uniform(np.uint32(step_key(0, 0)), (64, 4096))))


def test_hash_noise_never_reaches_0_or_1():
    """Every uint32 word maps strictly inside (0, 1), so the Gumbel noise is finite: the
    largest word gave exactly 1.0 (inf noise, a NaN relaxation row) with 24-bit floats."""
    import jax.numpy as jnp

    from featviz.backends.jax.relax import unit_interval
    words = jnp.asarray(np.array([0, 1, 511, 512, 2 ** 31, 2 ** 32 - 513, 2 ** 32 - 1],
                                 dtype=np.uint32))
    u = np.asarray(unit_interval(words))
    assert u.dtype == np.float32 and (0 < u).all() and (u < 1).all()
    assert np.isfinite(-np.log(-np.log(u))).all()
    assert u[-1] == np.float32(1 - 2 ** -24) and u[0] == np.float32(2 ** -24)


def test_unsupported_architecture_is_a_clear_error(llama):
    h = dataclasses.replace(llama, model_type="qwen3", cache={})
    with pytest.raises(FeatvizError, match="llama, mistral, qwen2, gpt2"):
        to_jax(h)


def test_dream_on_the_jax_backend_is_reproducible(tiny):
    from featviz.search.api import dream
    from featviz.search.config import DreamConfig
    cfg = DreamConfig(length=4, batch=4, steps=12, swap_iters=3, children=6, k_grad=8, k_lm=8,
                      hard_samples=2, caps=(5.0,), init_samples=8, beam_lams=(), backend="jax")
    a = dream(tiny, "mlp:1:3", cfg, progress=False)
    b = dream(tiny, "mlp:1:3", cfg, progress=False)
    assert a.stats["backend"] == "jax" and a.stats["relax_steps"] == 12
    strip = lambda r: {k: v for k, v in r.to_json().items() if k != "stats"}  # noqa: E731
    assert strip(a) == strip(b) and a.best is not None
    with pytest.raises(FeatvizError, match="--backend must be"):
        DreamConfig(backend="tpu").check()


def test_per_row_targets_match_torch_and_compile_once(tiny):
    """Batching across targets: each row reads its own target in both backends, one
    relaxation step agrees, and a loop over a (targets x rows) batch compiles once."""
    from featviz.targets.core import PerRow
    h = tiny
    ts = tuple(featviz.parse_target(s, h) for s in ("mlp:2:4", "head:1:0@max", "mlp:0:1@mean"))
    rows = (0, 0, 1, 1, 2, 2)
    pr = PerRow(ts, rows)
    B, n, V = len(rows), 4, h.vocab_size
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (B, n + 1), generator=g)
    ids[:, 0] = h.bos_id
    with torch.no_grad():
        caps, _ = run(h, pr.sites(), input_ids=ids)
        want = pr.evaluate(caps, h).numpy()
    jm = to_jax(h)
    jc, _ = forward(jm, embed_ids(jm, ids.numpy()), sites=pr.sites())
    np.testing.assert_allclose(np.asarray(evaluate(pr, jc, jm)), want, atol=1e-4, rtol=1e-4)
    theta = torch.randn(B, n, V, generator=g)
    noise = torch.from_numpy(np.array(hash_uniform(np.uint32(step_key(0, 0)), (B, n, V))))
    lam = torch.tensor([0.0, 0.3] * 3)
    cap = torch.full((B,), np.inf)
    mask = readable_mask(h)
    obj = make_objective(jm, pr, mask.numpy(), lam.numpy(), cap.numpy(), prefix_ids=[h.bos_id],
                         suffix_ids=[], n=n, hard=True)
    _, (js, _, _, _) = obj(jm.params, jnp.asarray(theta.numpy()), jnp.asarray(noise.numpy()), 0.7)
    ts_ = _torch_objective(h, pr, theta, noise, 0.7, lam, cap, mask, n, True)
    np.testing.assert_allclose(np.asarray(js), ts_.detach().numpy(), atol=1e-3, rtol=1e-4)
    out, trace, step = relax_jax(h, pr, theta, mask, lam, cap, steps=5, seconds=None, lr=0.3,
                                 tau0=2.0, tau1=0.2, hard=True, seed=0, prefix_ids=[h.bos_id],
                                 suffix_ids=[])
    assert trace.steps == 5 and torch.isfinite(out).all()
    n_compiled = step._cache_size()
    other = PerRow(tuple(featviz.parse_target(x, h) for x in ("mlp:2:7", "head:1:1@max",
                                                               "mlp:0:3@mean")), rows)
    _, _, step2 = relax_jax(h, other, theta, mask, lam, cap, steps=3, seconds=None, lr=0.3,
                            tau0=2.0, tau1=0.2, hard=True, seed=0, prefix_ids=[h.bos_id],
                            suffix_ids=[])
    assert step2.compiled is step.compiled and step._cache_size() == n_compiled


def test_dream_many_on_the_jax_backend(tiny):
    from featviz.search.api import dream_many
    from featviz.search.config import DreamConfig
    cfg = DreamConfig(length=4, batch=4, steps=8, swap_iters=2, children=6, k_grad=8, k_lm=8,
                      hard_samples=2, caps=(5.0,), init_samples=8, beam_lams=(), backend="jax")
    res = dream_many(tiny, ["mlp:1:3", "mlp:2:4"], cfg, progress=False)
    assert [r.stats["backend"] for r in res] == ["jax", "jax"]
    assert all(r.stats["batched_targets"] == 2 and r.best is not None for r in res)


def test_jitted_swap_scoring_matches_torch(tiny):
    """The discretizer's exact scores and one-hot gradients on the JAX backend equal the
    torch ones, and varying batch sizes reuse one compiled function per size bucket."""
    from featviz.backends.jax.score import JaxScorer, bucket
    from featviz.backends.torch.score import evaluate as t_evaluate
    from featviz.backends.torch.score import onehot_grads
    from featviz.model.tokens import Tokens
    h = tiny
    tokens = Tokens(h, h.encode("the")[:1], h.encode(" end")[:1])
    n = 4
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, h.vocab_size, (6, n), generator=g)
    lam = torch.tensor([0.0, 0.2, 0.5, 0.0, 1.0, 0.1])
    cap = torch.tensor([np.inf, np.inf, np.inf, 5.0, np.inf, 6.0])
    for spec in ("mlp:2:4", "head:1:0@max", "resid:0:3@mean"):
        t = featviz.parse_target(spec, h)
        js = JaxScorer(h, t, tokens, n)
        a, x, p = t_evaluate(tokens, t, ids)
        ja, jx, jp = js.evaluate(ids)
        for want, got in ((a, ja), (x, jx), (p, jp)):
            np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-4, rtol=1e-4,
                                       err_msg=spec)
        assert js.evaluate(ids, with_xe=False)[1] is None
        gr, lm = onehot_grads(tokens, t, ids, lam, cap)
        jg, jl = js.onehot_grads(ids, lam, cap)
        np.testing.assert_allclose(jl.numpy(), lm.numpy(), atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(jg.numpy(), gr.numpy(), atol=1e-4, rtol=1e-3, err_msg=spec)
        n_compiled = js._scores._cache_size()
        for b in (1, 3, 5, 8):                          # one size bucket: nothing new
            js.evaluate(ids[:1].repeat(b, 1))
        assert js._scores._cache_size() == n_compiled
    assert [bucket(b) for b in (1, 8, 9, 64, 65, 300)] == [8, 8, 16, 64, 64, 64]
    # another neuron of the same layer shares the compiled code and scores its own neuron
    a4 = JaxScorer(h, featviz.parse_target("mlp:2:4", h), tokens, n)
    a5 = JaxScorer(h, featviz.parse_target("mlp:2:5", h), tokens, n)
    assert a4._scores is a5._scores and a4._grads is a5._grads
    want5, _, _ = t_evaluate(tokens, featviz.parse_target("mlp:2:5", h), ids)
    np.testing.assert_allclose(a5.evaluate(ids)[0].numpy(), want5.numpy(), atol=1e-4, rtol=1e-4)


def test_bf16_products_follow_fp32(tiny):
    """precision="bf16": weight matrices in bfloat16, products bf16 x bf16 -> f32 in the
    forward and in the hand-written backward (which matches autodiff of the same product
    on rounded inputs, for both operands); readings stay near the float32 model's."""
    from featviz.backends.jax.forward import mm
    h = tiny
    lo = to_jax(h, "bf16")
    assert lo is to_jax(h, "bf16") and lo is not to_jax(h)
    assert lo.params["layers"][0]["o"].dtype == jnp.bfloat16
    assert lo.params["embed"].dtype == jnp.float32          # the lookup stays exact
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 3, 16)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((16, 8)), jnp.bfloat16)
    c = jnp.asarray(rng.standard_normal((2, 3, 8)), jnp.float32)
    got = jax.grad(lambda x, w: (mm(x, w) * c).sum(), argnums=(0, 1))(x, w)
    r = lambda a: a.astype(jnp.bfloat16).astype(jnp.float32)  # noqa: E731
    want = jax.grad(lambda x, w: ((r(x) @ w.astype(jnp.float32)) * r(c)).sum(),
                    argnums=(0, 1))(x, w)
    for g, e in zip(got, want):
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(e, np.float32),
                                   rtol=2e-2, atol=2e-2)
    hlo = jax.jit(jax.grad(lambda x: jnp.tanh(mm(x, w)).sum())).lower(x).as_text()
    dots = [l for l in hlo.splitlines() if "dot_general" in l]
    assert len(dots) == 2 and all(l.count("bf16>") == 2 for l in dots)   # forward + backward
    ids = with_bos(h, h.encode("the cat sat on")).numpy()
    for spec in ("mlp:2:4", "head:1:0"):
        t = featviz.parse_target(spec, h)
        hi_c, hi_l = forward(to_jax(h), embed_ids(to_jax(h), ids), sites=t.sites(), need_logits=True)
        lo_c, lo_l = forward(lo, embed_ids(lo, ids), sites=t.sites(), need_logits=True)
        a, b = np.asarray(evaluate(t, hi_c, to_jax(h))), np.asarray(evaluate(t, lo_c, lo))
        np.testing.assert_allclose(b, a, atol=0.05 * max(1.0, float(np.abs(a).max())))
        np.testing.assert_allclose(np.asarray(lo_l), np.asarray(hi_l), atol=0.1)

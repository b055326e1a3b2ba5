"""The relaxation's hard readout: every straight-through step's hard rows, with the exact
scores that step computed, and the reset of a stalled row to its best (both backends)."""
import math

import numpy as np
import pytest
import torch

import featviz
from featviz.backends.objective import combine
from featviz.backends.schedule import HardReadout, RelaxTrace
from featviz.backends.torch.relax import (
    project_simplex,
    relax,
    reset_rows,
    sparse_size,
    top_support,
)
from featviz.backends.torch.score import evaluate
from featviz.model.tokens import Tokens
from featviz.model.vocab import readable_mask
from featviz.search.api import dream
from featviz.search.config import DreamConfig


def _soft_embeds(h, tokens, rows: int, n: int):
    """make_embeds for ``relax``: BOS, then the soft tokens."""
    def embeds(soft):
        e = h.model.get_input_embeddings()(tokens.full(torch.zeros(rows, n, dtype=torch.long)))
        return torch.cat([e[:, :1], soft], 1)
    return embeds


def _torch_relax(h, target, lam, cap, steps, patience=0, seed=0, n=5):
    tokens = Tokens(h, [], [])
    rows = len(lam)
    theta = torch.zeros(rows, n, h.vocab_size)

    embeds = _soft_embeds(h, tokens, rows, n)
    trace = relax(h, target, theta, readable_mask(h), lam, cap, steps=steps, seconds=None, lr=0.3,
                  tau0=2.0, tau1=0.2, hard=True, generator=torch.Generator().manual_seed(seed),
                  make_embeds=embeds, start=1, patience=patience)
    return tokens, theta, trace


def test_each_steps_hard_rows_carry_their_exact_scores(llama):
    t = featviz.parse_target("mlp:1:3", llama)
    lam, cap = torch.tensor([0.0, 0.3, 0.0]), torch.tensor([math.inf, math.inf, 6.0])
    tokens, _, trace = _torch_relax(llama, t, lam, cap, steps=6)
    assert len(trace.samples) == 6
    mask = readable_mask(llama)
    for ids, act, xe in trace.samples:
        assert ids.shape == (3, 5) and bool(mask[ids].all())
        a, x, _ = evaluate(tokens, t, ids)          # a fresh forward on the hard tokens
        np.testing.assert_allclose(act.numpy(), a.numpy(), atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(xe.numpy(), x.numpy(), atol=1e-4, rtol=1e-4)


def test_no_fluency_term_keeps_no_samples(llama):
    t = featviz.parse_target("mlp:1:3", llama)
    _, _, trace = _torch_relax(llama, t, torch.zeros(2), torch.full((2,), math.inf), steps=3)
    assert trace.steps == 3 and trace.samples == []      # xe unknown: scored later instead


def test_a_stalled_row_restarts_from_its_best():
    trace = RelaxTrace(0, 0.0, [], [])
    lam, cap = torch.tensor([0.5, 0.0]), torch.tensor([math.inf, 5.0])
    r = HardReadout(lam, cap, patience=2, trace=trace)
    ids = lambda a, b: torch.tensor([[a] * 3, [b] * 3])          # noqa: E731
    assert r.see(ids(1, 1), torch.tensor([1.0, 1.0]), torch.tensor([4.0, 4.0])) is None
    # row 0 improves (score 2 - 0.5*1 > 1 - 2), row 1 gets worse (xe above its cap)
    assert r.see(ids(2, 2), torch.tensor([2.0, 2.0]), torch.tensor([1.0, 9.0])) is None
    assert r.best_ids.tolist() == [[2] * 3, [1] * 3]
    stalled = r.see(ids(3, 3), torch.tensor([0.0, 0.0]), torch.tensor([9.0, 9.0]))
    assert stalled.tolist() == [False, True] and trace.resets == 1
    want = combine(torch.tensor([2.0, 1.0]), torch.tensor([1.0, 4.0]), lam, cap)
    assert r.best.tolist() == pytest.approx(want.tolist())
    assert len(trace.samples) == 3
    # the reset itself: theta's row becomes scale * one-hot(best), its Adam moments zero
    theta = torch.randn(2, 3, 7, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.1)
    (theta ** 2).sum().backward()
    opt.step()
    keep = theta.detach()[0].clone()
    reset_rows(theta, opt.state[theta], stalled, torch.tensor([[1] * 3, [4, 5, 6]]), 3.0)
    assert torch.equal(theta.detach()[0], keep)
    assert torch.equal(theta.detach()[1].argmax(-1), torch.tensor([4, 5, 6]))
    assert float(theta.detach()[1].sum()) == pytest.approx(9.0)
    assert float(opt.state[theta]["exp_avg"][1].abs().sum()) == 0.0
    assert float(opt.state[theta]["exp_avg_sq"][0].abs().sum()) > 0.0


def test_resets_happen_in_a_long_relaxation(llama):
    t = featviz.parse_target("mlp:1:3", llama)
    lam, cap = torch.tensor([0.0, 0.3]), torch.tensor([math.inf, math.inf])
    _, _, trace = _torch_relax(llama, t, lam, cap, steps=40, patience=3)
    assert trace.resets > 0
    _, _, off = _torch_relax(llama, t, lam, cap, steps=40, patience=0)
    assert off.resets == 0


def test_the_jax_relaxation_reads_out_and_resets_the_same_way(llama):
    pytest.importorskip("jax")
    from featviz.backends.jax.relax import relax_jax
    from featviz.backends.jax.relax import reset_rows as jax_reset
    t = featviz.parse_target("mlp:1:3", llama)
    mask = readable_mask(llama)
    lam, cap = torch.tensor([0.0, 0.3, 0.0]), torch.tensor([math.inf, math.inf, 6.0])
    theta = torch.zeros(3, 5, llama.vocab_size)
    _, trace, _ = relax_jax(llama, t, theta, mask, lam, cap, steps=30, seconds=None, lr=0.3,
                            tau0=2.0, tau1=0.2, hard=True, seed=0, prefix_ids=[llama.bos_id],
                            suffix_ids=[], patience=3)
    assert len(trace.samples) == 30 and trace.resets > 0
    tokens = Tokens(llama, [], [])
    for ids, act, xe in trace.samples[::7]:
        a, x, _ = evaluate(tokens, t, ids)
        np.testing.assert_allclose(act.numpy(), a.numpy(), atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(xe.numpy(), x.numpy(), atol=1e-4, rtol=1e-4)
    import jax.numpy as jnp
    import optax
    th = jnp.ones((2, 3, 7))
    state = optax.adam(0.1).init(th)
    state = (state[0]._replace(mu=state[0].mu + 1.0, nu=state[0].nu + 1.0),) + state[1:]
    th2, state2 = jax_reset(th, state, np.array([True, False]),
                            np.array([[4, 5, 6], [0, 0, 0]]), 3.0)
    assert np.asarray(th2[0]).argmax(-1).tolist() == [4, 5, 6] and float(th2[0].sum()) == 9.0
    assert float(th2[1].sum()) == 21.0
    assert float(np.abs(np.asarray(state2[0].mu[0])).sum()) == 0.0
    assert float(np.asarray(state2[0].nu[1]).min()) == 1.0


def test_the_relaxations_samples_reach_the_archive(llama):
    cfg = DreamConfig(steps=12, swap_iters=0, seed=0, batch=4, caps=(6.0,), init_samples=8,
                      beam_lams=(), hard_samples=0)
    r = dream(llama, "mlp:1:3", cfg, progress=False)
    assert r.stats["relax_steps"] == 12 and r.stats["relax_samples_kept"] > 0
    off = dream(llama, "mlp:1:3", cfg.replace(straight_through=False), progress=False)
    assert "relax_samples_kept" not in off.stats


def test_the_jax_compile_cache_follows_the_environment(monkeypatch, tmp_path):
    from featviz.backends.jax import forward
    monkeypatch.setenv("FEATVIZ_JAX_CACHE", str(tmp_path / "jax"))
    assert forward.compile_cache_dir() == str(tmp_path / "jax")
    monkeypatch.setenv("FEATVIZ_JAX_CACHE", "")
    assert forward.compile_cache_dir() is None
    monkeypatch.delenv("FEATVIZ_JAX_CACHE")
    assert forward.compile_cache_dir().endswith("featviz/jax")


def test_lm_support_is_the_models_top_k_and_thetas_argmax():
    from featviz.backends.torch.relax import lm_support
    logits = torch.tensor([[[0.0, 5.0, 4.0, 1.0, 3.0], [9.0, 0.0, 0.0, 8.0, 0.0]]] * 2)
    theta = torch.zeros(2, 2, 5)
    theta[:, 0, 3] = 1.0                       # theta's argmax at position 0: token 3
    theta[:, 1, 4] = 1.0                       # at position 1: token 4 (outside the vocabulary)
    mask = torch.tensor([True, True, True, True, False])
    allowed = lm_support(logits, theta, mask, 2, torch.tensor([True, False])) == 0
    assert allowed[0, 0].tolist() == [False, True, True, True, False]   # top 2 + argmax
    assert allowed[0, 1].tolist() == [True, False, False, True, False]  # argmax not in mask
    assert allowed[1].tolist() == [mask.tolist()] * 2       # a row without fluency: all


def test_lm_topk_samples_only_the_models_next_tokens(llama):
    """With lm_topk 1, every step after the first samples each position of a fluency row
    from {the model's top-1 next token given the step before's hard rows, theta's argmax};
    the pure-activation row samples the whole vocabulary."""
    t = featviz.parse_target("mlp:1:3", llama)
    tokens, n = Tokens(llama, [], []), 5
    lam, cap = torch.tensor([0.0, 0.3, 0.0]), torch.tensor([math.inf, math.inf, 6.0])
    theta = torch.zeros(3, n, llama.vocab_size)
    mask = readable_mask(llama)
    thetas = []

    embeds = _soft_embeds(llama, tokens, 3, n)
    trace = relax(llama, t, theta, mask, lam, cap, steps=8, seconds=None, lr=0.3, tau0=2.0,
                  tau1=0.2, hard=True, generator=torch.Generator().manual_seed(0),
                  make_embeds=embeds, start=1, lm_topk=1,
                  on_step=lambda i, th: thetas.append(th.detach().clone()))
    outside = 0
    for step in range(1, 8):
        before = trace.samples[step - 1][0]
        with torch.no_grad():
            top1 = llama.model(input_ids=tokens.full(before)).logits[:, :n].argmax(-1)
        arg = (thetas[step - 1] + torch.where(mask, 0.0, -1e9)).argmax(-1)
        ids = trace.samples[step][0]
        ok = (ids == top1) | (ids == arg)
        assert bool(ok[1:].all())                 # the fluency rows stay in their support
        outside += int((~ok[0]).sum())
    assert outside > 0                            # the lambda-0, uncapped row does not


def test_lm_topk_is_checked_and_torch_only(llama):
    with pytest.raises(featviz.FeatvizError, match="lm_topk must be"):
        DreamConfig(lm_topk=-1).check()
    with pytest.raises(featviz.FeatvizError, match="torch backend only"):
        DreamConfig(lm_topk=8, backend="jax").check()
    r = dream(llama, "mlp:1:3", DreamConfig(steps=6, swap_iters=1, seed=0, batch=3, caps=(6.0,),
                                             init_samples=8, beam_lams=(), lm_topk=16),
              progress=False)
    assert r.stats["relax_steps"] == 6 and r.config["lm_topk"] == 16


def test_sparse_support_shrinks_from_the_vocabulary_to_k():
    assert sparse_size(2.0, 2.0, 0.2, 16, 1000) == 1000
    assert sparse_size(0.2, 2.0, 0.2, 16, 1000) == 16
    mid = sparse_size(math.sqrt(0.4), 2.0, 0.2, 16, 1000)
    assert mid == round(16 * (1000 / 16) ** 0.5)
    assert sparse_size(1.0, 2.0, 0.2, 4000, 1000) == 1000
    x = torch.tensor([[[3.0, 1.0, 2.0, 2.0, -1.0]]])
    assert top_support(x, 2).eq(torch.tensor([[[0.0, -1e9, 0.0, 0.0, -1e9]]])).all()  # tie kept


def test_sparse_k_samples_only_thetas_top_tokens_at_the_end(llama):
    """With tau0 == tau1 the support is sparse_k from the first step: every hard sample is
    among theta's top-2 tokens (within the vocabulary mask) at its step."""
    t = featviz.parse_target("mlp:1:3", llama)
    tokens, n = Tokens(llama, [], []), 4
    lam, cap = torch.tensor([0.0, 0.3]), torch.tensor([math.inf, 6.0])
    theta = torch.randn(2, n, llama.vocab_size, generator=torch.Generator().manual_seed(1))
    mask = readable_mask(llama)
    before = []

    embeds = _soft_embeds(llama, tokens, 2, n)
    trace = relax(llama, t, theta, mask, lam, cap, steps=6, seconds=None, lr=0.3, tau0=1.0,
                  tau1=1.0, hard=True, generator=torch.Generator().manual_seed(0),
                  make_embeds=embeds, start=1, sparse_k=2,
                  on_step=lambda i, th: before.append(th.detach().clone()))
    for step in range(1, 6):
        top2 = (before[step - 1] + torch.where(mask, 0.0, -1e9)).topk(2, -1).indices
        ids = trace.samples[step][0]
        assert bool((ids[..., None] == top2).any(-1).all())


def test_sparse_k_is_checked_and_torch_only(llama):
    with pytest.raises(featviz.FeatvizError, match="sparse_k must be"):
        DreamConfig(sparse_k=-2).check()
    with pytest.raises(featviz.FeatvizError, match="torch backend only"):
        DreamConfig(sparse_k=8, backend="jax").check()
    r = dream(llama, "mlp:1:3", DreamConfig(steps=6, swap_iters=1, seed=0, batch=3, caps=(6.0,),
                                             init_samples=8, beam_lams=(), sparse_k=8),
              progress=False)
    assert r.stats["relax_steps"] == 6 and r.config["sparse_k"] == 8


def _simplex_reference(v: np.ndarray) -> np.ndarray:
    """Sorting projection onto the simplex, one row at a time, in float64."""
    out = np.zeros_like(v)
    for i, row in enumerate(v.reshape(-1, v.shape[-1])):
        u = np.sort(row)[::-1]
        css = np.cumsum(u)
        rho = np.nonzero(u - (css - 1) / np.arange(1, len(u) + 1) > 0)[0][-1] + 1
        out.reshape(-1, v.shape[-1])[i] = np.maximum(row - (css[rho - 1] - 1) / rho, 0)
    return out


@pytest.mark.parametrize("k", [4, 2048])          # 4: the top-k shortcut falls back to a sort
def test_project_simplex_is_the_euclidean_projection(k):
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 5, 40, generator=g) * torch.tensor([0.1, 1.0, 5.0])[:, None, None]
    mask = torch.ones(40, dtype=torch.bool)
    mask[::7] = False
    got = project_simplex(v, mask, k=k)
    assert torch.allclose(got.sum(-1), torch.ones(3, 5), atol=1e-5)
    assert bool((got >= 0).all()) and bool((got[..., ~mask] == 0).all())
    want = _simplex_reference(v[..., mask].double().numpy())
    assert np.allclose(got[..., mask].numpy(), want, atol=1e-5)
    one_hot = torch.zeros(1, 1, 40)
    one_hot[0, 0, 3] = 1.0
    assert torch.equal(project_simplex(one_hot, mask), one_hot)   # a vertex stays


def test_simplex_relaxation_samples_its_distributions_support(llama):
    """PGD's parameterization: every step's hard rows lie in the support of p at that
    step (tokens at exactly 0 after the projection), theta comes back as log p, and
    the first step's rows are the starting tokens when p starts one-hot."""
    t = featviz.parse_target("mlp:1:3", llama)
    tokens, n = Tokens(llama, [], []), 4
    lam, cap = torch.tensor([0.0, 0.3]), torch.tensor([math.inf, 6.0])
    mask = readable_mask(llama)
    allowed = torch.nonzero(mask)[:, 0]
    init = allowed[torch.randint(len(allowed), (2, n), generator=torch.Generator().manual_seed(2))]
    theta = torch.zeros(2, n, llama.vocab_size).scatter_(-1, init[..., None], 3.0)
    ps = []

    embeds = _soft_embeds(llama, tokens, 2, n)
    trace = relax(llama, t, theta, mask, lam, cap, steps=6, seconds=None, lr=0.1, tau0=2.0,
                  tau1=0.2, hard=True, generator=torch.Generator().manual_seed(0),
                  make_embeds=embeds, start=1, simplex=True, patience=2,
                  on_step=lambda i, p: ps.append(p.detach().clone()))
    assert torch.equal(trace.samples[0][0], init)
    for step in range(1, 6):
        p = ps[step - 1]
        assert torch.allclose(p.sum(-1), torch.ones(2, n), atol=1e-5)
        assert bool((p[..., ~mask] == 0).all())
        assert bool(((p > 0).sum(-1) < int(mask.sum())).all())    # some tokens at 0
        ids = trace.samples[step][0]
        assert bool((p.gather(-1, ids[..., None]) > 0).all())
    last = ps[-1]
    assert torch.allclose(theta.exp() * (last > 0), last, atol=1e-5)
    DreamConfig(simplex=True, backend="jax").check()                # both backends
    with pytest.raises(featviz.FeatvizError, match="simplex must be"):
        DreamConfig(simplex="yes").check()
    with pytest.raises(featviz.FeatvizError, match="set lm_topk 0 and sparse_k 0"):
        DreamConfig(simplex=True, sparse_k=8).check()
    r = dream(llama, "mlp:1:3", DreamConfig(steps=5, swap_iters=1, seed=0, batch=3, caps=(6.0,),
                                             init_samples=8, beam_lams=(), simplex=True,
                                             lr=0.1), progress=False)
    assert r.stats["relax_steps"] == 5 and r.config["simplex"] is True


def test_the_jax_projection_is_the_euclidean_projection():
    pytest.importorskip("jax")
    import jax.numpy as jnp

    from featviz.backends.jax.relax import project_simplex as jax_project
    g = torch.Generator().manual_seed(1)
    v = torch.randn(3, 5, 40, generator=g) * torch.tensor([0.1, 1.0, 5.0])[:, None, None]
    mask = torch.ones(40, dtype=torch.bool)
    mask[::7] = False
    bias = jnp.where(jnp.asarray(mask.numpy()), 0.0, -1e9)
    got = np.asarray(jax_project(jnp.asarray(v.numpy()), bias))
    assert np.allclose(got.sum(-1), 1.0, atol=1e-5) and (got >= 0).all()
    assert (got[..., ~mask.numpy()] == 0).all()
    want = _simplex_reference(v[..., mask].double().numpy())
    assert np.allclose(got[..., mask.numpy()], want, atol=1e-5)
    np.testing.assert_allclose(got, project_simplex(v, mask).numpy(), atol=1e-6)
    vertex = np.zeros((1, 1, 40), np.float32)
    vertex[0, 0, 3] = 1.0
    assert np.array_equal(np.asarray(jax_project(jnp.asarray(vertex), bias)), vertex)


def test_the_jax_simplex_relaxation_keeps_its_start_and_support(llama):
    """On JAX as on torch: the first hard rows are the start, every step's rows lie in
    p's support, p stays on the simplex, theta comes back as log p, the rows are scored
    exactly, and stalled rows restart."""
    pytest.importorskip("jax")
    from featviz.backends.jax.relax import relax_jax
    t = featviz.parse_target("mlp:1:3", llama)
    mask = readable_mask(llama)
    lam, cap = torch.tensor([0.0, 0.3]), torch.tensor([math.inf, 6.0])
    allowed = torch.nonzero(mask)[:, 0]
    init = allowed[torch.randint(len(allowed), (2, 4), generator=torch.Generator().manual_seed(2))]
    theta = torch.zeros(2, 4, llama.vocab_size).scatter_(-1, init[..., None], 3.0)
    ps = []
    out, trace, _ = relax_jax(llama, t, theta, mask, lam, cap, steps=20, seconds=None, lr=0.1,
                              tau0=2.0, tau1=0.2, hard=True, seed=0, prefix_ids=[llama.bos_id],
                              suffix_ids=[], patience=2, simplex=True,
                              on_step=lambda i, p: ps.append(p))
    assert torch.equal(trace.samples[0][0], init) and trace.resets > 0
    p = ps[9]                                       # p after step 9 (the 10th)
    assert torch.allclose(p.sum(-1), torch.ones(2, 4), atol=1e-5)
    assert bool((p[..., ~mask] == 0).all()) and bool(((p > 0).sum(-1) < int(mask.sum())).all())
    assert bool((p.gather(-1, trace.samples[10][0][..., None]) > 0).all())
    last = torch.exp(out) * (out > -1e8)
    assert torch.allclose(last.sum(-1), torch.ones(2, 4), atol=1e-5)
    tokens = Tokens(llama, [], [])
    for ids, act, xe in trace.samples[::6]:
        a, x, _ = evaluate(tokens, t, ids)
        np.testing.assert_allclose(act.numpy(), a.numpy(), atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(xe.numpy(), x.numpy(), atol=1e-4, rtol=1e-4)
    r = dream(llama, "mlp:1:3", DreamConfig(steps=5, swap_iters=1, seed=0, batch=3, caps=(6.0,),
                                             init_samples=8, beam_lams=(), simplex=True,
                                             lr=0.1, backend="jax"), progress=False)
    assert r.stats["relax_steps"] == 5 and r.config["simplex"] is True

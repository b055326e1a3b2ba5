"""Each miner accumulator alone, against brute force over the batches it was fed."""
import numpy as np
import pytest
import torch

from featviz.mining.accumulators import (
    BandReservoir,
    Controls,
    Moments,
    PositionMaxima,
    RowPool,
    TopK,
)
from featviz.mining.grid import merge_pairs, target_keys, uniform


def batches(seed=0, T=3, n=6, B=5, W=7, scale=1.0):
    rng = np.random.default_rng(seed)
    for step in range(n):
        per = (rng.standard_normal((T, B, W)) * scale ** step).astype(np.float32)
        ids = rng.integers(0, 50, (B, W)).astype(np.int32)
        yield per, ids, np.arange(step * B, step * B + B)


def test_topk_keeps_the_best_windows_in_order():
    top = TopK(3, 4, 7)
    seen = []
    for per, ids, win in batches():
        wmax = per[:, :, 1:].max(2)
        top.update(wmax, per[:, :, 1:].argmax(2) + 1, per, ids, win)
        seen.append((per, ids))
    per = np.concatenate([p for p, _ in seen], 1)
    ids = np.concatenate([i for _, i in seen], 0)
    for t, ranked in enumerate(top.ranked()):
        wmax = per[t, :, 1:].max(1)
        want = np.argsort(-wmax, kind="stable")[:4]
        assert [e.window for e in ranked] == want.tolist()
        assert [e.value for e in ranked] == pytest.approx(wmax[want].tolist())
        for e in ranked:                      # the window's own tokens and values travel along
            assert list(e.token_ids) == ids[e.window].tolist()
            np.testing.assert_array_equal(e.activations, per[t, e.window])


def test_moments_are_exact_while_the_histogram_grows():
    m = Moments(3, 4, 0.5)
    flat_all = []
    for per, _, _ in batches(scale=1.4, n=12):
        flat = torch.from_numpy(per[:, :, 1:].reshape(3, -1).copy())
        m.update(flat, None, flat.amax(dim=1))
        flat_all.append(flat.numpy())
    vals = np.concatenate(flat_all, 1)

    class R:
        pass
    for t in range(3):
        r = R()
        m.fill(r, t, vals.shape[1])
        counts, _ = np.histogram(vals[t], bins=np.asarray(r.hist_edges, dtype=np.float64))
        assert counts.tolist() == r.hist_counts
        assert r.max == pytest.approx(vals[t].max()) and r.min == pytest.approx(vals[t].min())
        assert r.mean == pytest.approx(vals[t].mean(), rel=1e-5, abs=1e-6)
        assert r.std == pytest.approx(vals[t].std(), rel=1e-4)
        assert r.density == pytest.approx((vals[t] > 0.5).mean())


def test_moments_count_nonfinite_values_apart():
    m = Moments(1, 4, 0.0)
    flat = torch.tensor([[1.0, float("nan"), 2.0, float("inf")]])
    valid = torch.isfinite(flat)
    m.update(flat, valid, torch.tensor([2.0]))

    class R:
        pass
    r = R()
    m.fill(r, 0, 4)
    assert r.nonfinite == 2 and r.max == 2.0 and sum(r.hist_counts) == 2


def test_band_reservoir_counts_every_positive_window_and_samples_real_ones():
    res = BandReservoir(target_keys(["a", "b"], 0), 4, 2, 7)
    per_all = []
    for per, ids, win in batches(T=2, scale=1.3, n=20):
        wmax = per[:, :, 1:].max(2)
        res.update(wmax, per[:, :, 1:].argmax(2) + 1, per, ids, win)
        per_all.append(per)
    per = np.concatenate(per_all, 1)
    wmax = per[:, :, 1:].max(2)
    bands = res.bands(wmax.max(1), np.full((2, 1), -1), 4, 2)
    for t in range(2):
        assert sum(b.count for b in bands[t]) == int((wmax[t] > 0).sum())
        for b in bands[t]:
            for e in b.samples:
                assert e.value == pytest.approx(wmax[t, e.window])
                assert b.lo * wmax[t].max() - 1e-6 <= e.value
                np.testing.assert_array_equal(e.activations, per[t, e.window])
    assert res.pool.n >= (res.row >= 0).sum()       # rows only for filled slots


def test_row_pool_compacts_orphaned_rows_and_renumbers_the_slots():
    pool = RowPool(3)
    live = np.full(10, -1)
    live[:8] = pool.alloc(8, live)
    pool.rows[live[:8]] = np.arange(24, dtype=np.float32).reshape(8, 3)
    live[[0, 2, 3, 5, 6, 7]] = -1                    # slots given up: their rows orphaned
    kept = pool.rows[live[[1, 4]]].copy()
    cap = len(pool.rows)
    new = pool.alloc(cap - pool.n + 1, live)         # no room: compacts instead of growing
    assert pool.n == 2 + cap - 8 + 1 and new[0] == 2
    np.testing.assert_array_equal(pool.rows[live[[1, 4]]], kept)
    other = RowPool(3)
    o_live = np.array([-1, 0])
    at = other.alloc(1, o_live[:0])
    other.rows[at] = 7.0
    moved = pool.add(other, o_live, live)
    assert moved[0] == -1 and (pool.rows[moved[1]] == 7.0).all()
    np.testing.assert_array_equal(pool.rows[live[[1, 4]]], kept)


def test_controls_are_a_uniform_reservoir_shared_by_all_targets():
    c = Controls(2, 3, 7, seed=0)
    for per, ids, win in batches(T=2):
        c.update(per, ids, win)
    ex = c.exemplars(1)
    assert [e.window for e in ex[0]] == [e.window for e in ex[1]]     # shared windows
    assert [e.window for e in ex[0]] == sorted(e.window for e in ex[0])
    assert len(ex[0]) == 3 and len({e.window for e in ex[0]}) == 3


def test_position_maxima_match_brute_force():
    pm = PositionMaxima(3, 7)
    per_all = []
    for per, _, _ in batches():
        pm.update(torch.from_numpy(per))
        per_all.append(per)
    per = np.concatenate(per_all, 1).astype(np.float64)

    class R:
        pass
    for t in range(3):
        r = R()
        pm.fill(r, t)
        np.testing.assert_allclose(r.position_max, per[t].max(0), rtol=1e-6)
        means = np.cumsum(per[t, :, 1:], axis=1) / np.arange(1, 7)
        np.testing.assert_allclose(r.prefix_mean_max[1:], means.max(0), rtol=1e-6)


def test_grid_helpers():
    a = np.arange(8)
    assert merge_pairs(a, 1, True).tolist() == [1, 5, 9, 13, 0, 0, 0, 0]
    assert merge_pairs(a, 1, False).tolist() == [0, 0, 0, 0, 1, 5, 9, 13]
    assert merge_pairs(a, 5, True).tolist() == [28] + [0] * 7
    u = uniform(target_keys(["x"], 0), np.arange(10_000))
    assert 0 < u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.02
    assert (uniform(target_keys(["x"], 0), [3]) == u[3]).all()        # a pure function


def test_entry_rows_are_the_dense_rows():
    """Rows built from a batch's nonzero entries (the miner's SAE path) equal the rows
    gathered from the dense batch, asked in any order, over rows that held others."""
    from featviz.mining.accumulators import EntryRows, put_rows
    g = torch.Generator().manual_seed(1)
    T, B, W = 7, 5, 9
    per = torch.rand(B, W, T, generator=g)
    per[per < 0.8] = 0
    per = per.permute(2, 0, 1)                                  # (T, B, W), as the miner's
    r, t = torch.nonzero(per.permute(1, 2, 0).reshape(B * W, T), as_tuple=True)
    rows = EntryRows(t * B + r // W, r % W, per.permute(1, 2, 0).reshape(B * W, T)[r, t],
                     T, B, W)
    ts, bs = np.array([6, 0, 3, 5, 2, 6]), np.array([4, 0, 2, 0, 1, 3])
    at = np.array([9, 2, 0, 5, 7, 3])
    for _ in range(2):
        got, want = np.full((10, W), 5.0, np.float32), np.full((10, W), 5.0, np.float32)
        put_rows(got, at, rows, ts, bs)
        put_rows(want, at, per, ts, bs)
        assert np.array_equal(got, want)
        assert np.array_equal(want[at], per[ts, bs].numpy())
        ts, bs = ts[::-1].copy(), bs[::-1].copy()
    put_rows(got, at[:0], rows, ts[:0], bs[:0])


def test_best_first_keys_rank_as_the_two_key_sort():
    """TopK's one-number keys order candidates as (value descending, then the earlier
    window; an empty slot last among its value) does, over ties, signed zeros, infinities
    and empty slots; values that are not float32 get no keys (the two-key sort then)."""
    from featviz.mining.accumulators import best_first_keys
    rng = np.random.default_rng(0)
    pool = np.array([-np.inf, -3.0, -1.0, -0.0, 0.0, float(np.float32(1e-30)), 2.5, np.inf,
                     float(np.float32(0.1)), -float(np.float32(0.1))])
    for _ in range(50):
        v = rng.choice(pool, size=(5, 30))
        w = np.stack([rng.permutation(40)[:30] for _ in range(5)])
        w[rng.random((5, 30)) < 0.2] = -1
        key = best_first_keys(v, w)
        for r in range(5):
            mine = np.argsort(-key[r], kind="stable")
            ref = np.lexsort((np.where(w[r] < 0, np.iinfo(np.int64).max, w[r]), -v[r]))
            assert [(v[r, i] + 0.0, w[r, i]) for i in mine] == \
                [(v[r, i] + 0.0, w[r, i]) for i in ref]
    assert best_first_keys(np.array([[1e-30]]), np.array([[0]])) is None
    assert best_first_keys(np.array([[1.0]]), np.array([[2 ** 31]])) is None


def test_reservoir_newcomers_sort_as_lexsort_does():
    """The reservoir's one-key sort of newcomers (cell, then priority) is lexsort's order:
    on the grid's priorities, on ties in the priority (then lexsort keeps the given
    order), on cells beyond the key's 19 bits and on priorities outside (0, 1)."""
    from featviz.mining.accumulators import by_cell_then_priority
    rng = np.random.default_rng(0)
    cases = [(rng.integers(0, 300_000, 5000), uniform(7, np.arange(5000))),
             (rng.integers(0, 4, 500), np.round(rng.random(500), 2)),       # ties in p
             (rng.integers(0, 2 ** 21, 500), rng.random(500)),              # wide cells
             (rng.integers(0, 9, 50), np.r_[0.0, rng.random(49)]),          # p = 0
             (np.zeros(0, np.int64), np.zeros(0))]
    for g, p in cases:
        assert np.array_equal(by_cell_then_priority(g, p), np.lexsort((p, g)))

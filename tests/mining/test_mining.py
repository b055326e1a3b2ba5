"""The streaming miner against brute force over the full activation array."""
import numpy as np
import pytest
import torch
from conftest import word_corpus

from featviz import FeatvizError, parse_targets
from featviz.mining.corpus import windows
from featviz.mining.miner import MineConfig, mine, read_all
from featviz.model.forward import run
from featviz.targets.core import all_sites


@pytest.fixture
def corpus_file(tmp_path):
    return word_corpus(tmp_path / "c.txt", 0, 60, 40)


TOL = 1e-5   # windows whose maxima tie within this may come out in either order


def assert_valid_top(chosen, values, wmax, k, tol=TOL):
    """``chosen`` (window indices, best first) with ``values`` is a correct top-k of
    ``wmax``: each value is its window's true max, the list is sorted, and no window left
    out beats one kept by more than ``tol``.  Windows that tie within ``tol`` may swap
    places (the miner scores windows in batches, the brute force all at once); a window
    that is really wrong, missing or duplicated fails."""
    chosen = list(chosen)
    assert len(chosen) == min(k, len(wmax)) and len(set(chosen)) == len(chosen)
    scale = tol * max(1.0, float(np.abs(wmax).max()))
    np.testing.assert_allclose(values, wmax[chosen], rtol=tol, atol=tol)
    assert all(a >= b - scale for a, b in zip(values, values[1:])), values
    rest = np.setdiff1d(np.arange(len(wmax)), chosen)
    if len(rest):
        assert wmax[rest].max() <= wmax[chosen].min() + scale


def test_valid_top_rejects_a_wrong_window():
    wmax = np.array([5.0, 3.0, 3.0 + 1e-7, 1.0, 4.0])
    assert_valid_top([0, 4, 1], wmax[[0, 4, 1]], wmax, 3)       # a tie, either order
    assert_valid_top([0, 4, 2], wmax[[0, 4, 2]], wmax, 3)
    with pytest.raises(AssertionError):
        assert_valid_top([0, 4, 3], wmax[[0, 4, 3]], wmax, 3)   # window 3 is not top-3
    with pytest.raises(AssertionError):
        assert_valid_top([0, 1, 4], wmax[[0, 1, 4]], wmax, 3)   # out of order
    with pytest.raises(AssertionError):
        assert_valid_top([0, 4, 4], wmax[[0, 4, 4]], wmax, 3)   # duplicated
    with pytest.raises(AssertionError):
        assert_valid_top([0, 4, 1], [5.0, 4.0, 3.5], wmax, 3)  # value not the window's


def brute(handle, targets, src, cfg):
    ws = list(windows(handle, src, cfg.window, max_tokens=cfg.max_tokens))
    ids = torch.as_tensor(np.stack([w.ids for w in ws]))
    with torch.no_grad():
        caps, _ = run(handle, all_sites(targets), input_ids=ids)
        per = torch.stack([t.per_position(caps, handle) for t in targets]).float().numpy()
    return ids.numpy(), per


@pytest.mark.parametrize("spec", ["mlp:1:0-11", "head:2:0-3", "resid:0:0-5@max"])
def test_miner_equals_brute_force(tiny, corpus_file, spec):
    targets = parse_targets(spec, tiny)
    cfg = MineConfig(window=12, max_tokens=1200, k=5, batch_size=7, hist_bins=8, cells=8,
                     per_band=2, controls=3)
    res = mine(tiny, targets, cfg, source=corpus_file, progress=False)
    ids, per = brute(tiny, targets, corpus_file, cfg)
    body = per[:, :, 1:]
    for t, r in enumerate(res):
        wmax = body[t].max(1)
        assert_valid_top([e.window for e in r.top], [e.value for e in r.top], wmax, cfg.k)
        for e in r.top:
            assert e.token_ids == ids[e.window].tolist()
            np.testing.assert_allclose(e.activations, per[t, e.window], rtol=1e-5, atol=1e-6)
            # the peak is a position holding the window's max (ties within TOL either way)
            assert body[t, e.window, e.peak - 1] >= wmax[e.window] - TOL * max(1, abs(wmax[e.window]))
        # the most negative windows: by their min, only those below 0, min at the peak
        wmin = body[t].min(1)
        neg = np.nonzero(wmin < 0)[0]
        assert len(r.bottom) == min(cfg.k, len(neg))
        if r.bottom:
            assert_valid_top([e.window for e in r.bottom], [-e.value for e in r.bottom], -wmin,
                             len(r.bottom))
        for e in r.bottom:
            assert e.value < 0 and e.value == pytest.approx(wmin[e.window], rel=1e-5)
            np.testing.assert_allclose(e.activations, per[t, e.window], rtol=1e-5, atol=1e-6)
            assert body[t, e.window, e.peak - 1] <= wmin[e.window] + TOL * max(1, abs(wmin[e.window]))
        vals = body[t].ravel()
        assert r.n_tokens == vals.size and r.n_windows == len(ids)
        assert r.max == pytest.approx(vals.max(), rel=1e-5)
        assert r.min == pytest.approx(vals.min(), rel=1e-5)
        assert r.mean == pytest.approx(vals.mean(), rel=1e-4, abs=1e-6)
        assert r.std == pytest.approx(vals.std(), rel=1e-3, abs=1e-6)
        assert r.density == (vals > 0).mean()
        counts, _ = np.histogram(vals, bins=np.asarray(r.hist_edges))
        assert counts.tolist() == r.hist_counts
        assert sum(r.hist_counts) == vals.size
        # quantiles from the histogram: within one bin width of the exact ones
        w = r.hist_edges[1] - r.hist_edges[0]
        for q in (0.5, 0.9, 0.99):
            assert abs(r.quantile(q) - np.quantile(vals, q)) <= w + 1e-6
        # band samples: real windows, value inside their band, not in the top-k
        top = {e.window for e in r.top}
        for b in r.bands:
            for e in b.samples:
                assert e.window not in top
                assert b.lo * r.max < e.value <= b.hi * r.max + 1e-6
                assert e.value == pytest.approx(wmax[e.window], rel=1e-5)
                np.testing.assert_allclose(e.activations, per[t, e.window], rtol=1e-5, atol=1e-6)
        if r.max > 0:
            n_pos = int((wmax > 0).sum())
            assert sum(b.count for b in r.bands) == n_pos
        assert len(r.controls) == 3
        for e in r.controls:
            np.testing.assert_allclose(e.activations, per[t, e.window], rtol=1e-5, atol=1e-6)


def test_band_samples_cover_bands(llama, corpus_file):
    """With enough slots every non-empty band below the top has samples."""
    targets = parse_targets("mlp:1:0-3", llama)
    cfg = MineConfig(window=8, max_tokens=1600, k=3, batch_size=16, cells=16, slots=4,
                     per_band=2, bands=4)
    res = mine(llama, targets, cfg, source=corpus_file, progress=False)
    _, per = brute(llama, targets, corpus_file, cfg)
    for t, r in enumerate(res):
        wmax = per[t, :, 1:].max(1)
        top = {e.window for e in r.top}
        for b in r.bands:
            # windows clearly inside the band (not within TOL of an edge) must be sampled;
            # a sampled band must hold some window, edges taken with TOL either way
            m = TOL * max(1.0, abs(r.max))
            clearly = [i for i in np.nonzero((wmax > b.lo * r.max + m) & (wmax <= b.hi * r.max - m))[0]
                       if i not in top]
            loosely = [i for i in np.nonzero((wmax > b.lo * r.max - m) & (wmax <= b.hi * r.max + m))[0]
                       if i not in top]
            if clearly:
                assert b.samples
            if b.samples:
                assert loosely


def test_read_all_matches_per_target(tiny):
    targets = parse_targets("mlp:0:1-3", tiny) + parse_targets("head:1:0-1", tiny) + \
        parse_targets("attn:1:2:0", tiny)
    ids = torch.tensor([[tiny.bos_id, 5, 9, 11, 40]])
    with torch.no_grad():
        caps, _ = run(tiny, all_sites(targets), input_ids=ids)
        got = read_all(caps, targets, tiny)
        want = torch.stack([t.per_position(caps, tiny) for t in targets])
    torch.testing.assert_close(got, want)


def test_nonfinite_values_are_counted(llama, corpus_file):
    from featviz.mining.miner import Miner
    t = parse_targets("mlp:0:0-1", llama)
    cfg = MineConfig(window=4, max_tokens=100, k=2, hist_bins=4, cells=4).check()
    m = Miner(t, cfg, 5)
    per = np.ones((2, 3, 5), dtype=np.float32)
    per[0, 1, 2] = np.nan
    per[1, 0, 3] = np.inf
    m.update(per, np.zeros((3, 5), np.int32), np.arange(3))
    r = m.finish()
    assert r[0].nonfinite == 1 and r[1].nonfinite == 1
    assert r[0].max == 1.0 and sum(r[0].hist_counts) == 11


@pytest.mark.parametrize("kw,msg", [({"k": 0}, "k must be"), ({"cells": 12}, "power of two"),
                                    ({"max_tokens": 3}, "at least one window")])
def test_bad_mine_config(kw, msg):
    with pytest.raises(FeatvizError, match=msg):
        MineConfig(**kw).check()


def test_growing_range_synthetic():
    """Values whose range grows batch after batch force many bin doublings; still exact."""
    from featviz.mining.miner import Miner
    rng = np.random.default_rng(1)
    cfg = MineConfig(window=6, max_tokens=100, k=4, hist_bins=4, cells=4, slots=2, bands=4,
                     per_band=2, controls=2).check()
    m = Miner([f"t{i}" for i in range(3)], cfg, 7)
    all_per = []
    for step in range(40):
        per = (rng.standard_normal((3, 5, 7)) * 1.3 ** step).astype(np.float32)
        ids = rng.integers(0, 50, (5, 7)).astype(np.int32)
        m.update(per, ids, np.arange(step * 5, step * 5 + 5))
        all_per.append(per)
    per = np.concatenate(all_per, 1)
    for t, r in enumerate(m.finish()):
        vals = per[t, :, 1:].ravel()
        counts, _ = np.histogram(vals, bins=np.asarray(r.hist_edges, dtype=np.float64))
        assert counts.tolist() == r.hist_counts
        wmax = per[t, :, 1:].max(1)
        assert [e.window for e in r.top] == np.argsort(-wmax, kind="stable")[:4].tolist()
        assert sum(b.count for b in r.bands) == int((wmax > 0).sum())
        for b in r.bands:
            for e in b.samples:
                assert e.value == pytest.approx(wmax[e.window])


@pytest.mark.parametrize("order", [(1, 2, 3), (3, 1, 2)])
def test_corpus_parts_merge_into_one_pass(llama, corpus_file, order):
    """Three corpus parts mined apart and merged (in any order) give exactly the records
    of one pass: top-k, bands and their samples, controls, histogram, counts, extremes,
    mean and sd."""
    from featviz.mining.miner import mine_part
    ts = parse_targets("mlp:1:0-7", llama) + parse_targets("head:2:0-1", llama)
    cfg = MineConfig(window=16, max_tokens=2400, k=5, cells=8, per_band=2, controls=3,
                     hist_bins=16, batch_size=8)
    one = mine(llama, ts, cfg, source=corpus_file, progress=False)
    parts = {i: mine_part(llama, ts, cfg, source=corpus_file, part=(i, 3), progress=False)
             for i in (1, 2, 3)}
    assert sum(p.n_win for p in parts.values()) == one[0].n_windows
    merged = parts[order[0]].merge(parts[order[1]]).merge(parts[order[2]]).finish()
    for a, b in zip(one, merged):
        assert a.to_json() == b.to_json()
        assert sum(len(band.samples) for band in a.bands) > 0
    with pytest.raises(FeatvizError, match="between 1 and N"):
        mine_part(llama, ts, cfg, source=corpus_file, part=(4, 3))


def test_a_targets_record_does_not_depend_on_the_targets_beside_it(llama, corpus_file):
    """Mined alone, in a small group or among many (another reduction layout in torch, and
    for sparse targets the nonzero-only histogram), a target's record is bit for bit the
    same: caches and resumed galleries keep records mined in other company."""
    cfg = MineConfig(window=16, max_tokens=1200, k=4, cells=8, per_band=2, controls=2,
                     batch_size=8)
    many = parse_targets("mlp:1:0-47", llama) + parse_targets("head:2:0-1", llama)
    together = {str(t): r.to_json() for t, r in
                zip(many, mine(llama, many, cfg, source=corpus_file, progress=False))}
    for spec in ("mlp:1:5", "head:2:1", "mlp:1:3-6"):
        ts = parse_targets(spec, llama)
        for t, r in zip(ts, mine(llama, ts, cfg, source=corpus_file, progress=False)):
            assert r.to_json() == together[str(t)]
    x = torch.zeros(3, 4, 5)             # sparse and dense histograms count alike
    x[0, 1, 2], x[2, 3, 4], x[1, 0, 0] = 1.5, -0.25, 3.0
    from featviz.mining.accumulators import Moments
    a, b = Moments(5, 4, 0.0), Moments(5, 4, 0.0)
    b._sparse = False
    for m in (a, b):
        m.update(x.movedim(-1, 0), None, x.amax(dim=(0, 1)))
    assert (a.hist == b.hist).all() and (a.n_above == b.n_above).all()
    assert a.hist.sum() == 5 * 12 and a.n_above.tolist() == [1, 0, 1, 0, 0]


def test_sparse_sums_are_the_dense_sums_to_the_bit():
    """The histogram path over nonzero values adds them in the dense sums' order, so mean
    and variance do not depend on which path a batch took (or on the entries being known)."""
    from featviz.mining.accumulators import Moments
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 31, 40, generator=g) * 50              # (B, P, T)
    x[torch.rand(x.shape, generator=g) > 0.05] = 0
    ms = [Moments(40, 8, 0.0) for _ in range(3)]
    ms[1]._sparse = False                                       # the dense path
    b, p, t = torch.nonzero(x, as_tuple=True)
    for i, m in enumerate(ms):
        m.update(x.movedim(-1, 0), None, x.amax(dim=(0, 1)),
                 nonzero=(p, t, x[b, p, t]) if i == 2 else None)
    assert ms[0].sums[0].tobytes() == ms[1].sums[0].tobytes() == ms[2].sums[0].tobytes()
    assert (ms[0].hist == ms[1].hist).all() and (ms[2].hist == ms[1].hist).all()

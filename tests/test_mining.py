"""The streaming miner against brute force over the full activation array."""
import numpy as np
import pytest
import torch

from featviz import FeatvizError, parse_targets
from featviz.corpus import windows
from featviz.exemplars import MineConfig, mine, read_all
from featviz.readout import run
from featviz.targets import all_sites

from conftest import word_corpus


@pytest.fixture
def corpus_file(tmp_path):
    return word_corpus(tmp_path / "c.txt", 0, 60, 40)


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
    res = mine(tiny, targets, corpus_file, cfg, progress=False)
    ids, per = brute(tiny, targets, corpus_file, cfg)
    body = per[:, :, 1:]
    for t, r in enumerate(res):
        wmax = body[t].max(1)
        order = np.argsort(-wmax, kind="stable")[:cfg.k]
        assert [e.window for e in r.top] == order.tolist()
        np.testing.assert_allclose([e.value for e in r.top], wmax[order], rtol=1e-5, atol=1e-6)
        for e in r.top:
            assert e.token_ids == ids[e.window].tolist()
            np.testing.assert_allclose(e.activations, per[t, e.window], rtol=1e-5, atol=1e-6)
            assert e.peak == int(body[t, e.window].argmax()) + 1
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
    res = mine(llama, targets, corpus_file, cfg, progress=False)
    _, per = brute(llama, targets, corpus_file, cfg)
    for t, r in enumerate(res):
        wmax = per[t, :, 1:].max(1)
        top = {e.window for e in r.top}
        for b in r.bands:
            inside = [i for i in np.nonzero((wmax > b.lo * r.max) & (wmax <= b.hi * r.max))[0]
                      if i not in top]
            assert bool(b.samples) == bool(inside)


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
    from featviz.exemplars import Miner
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
    from featviz.exemplars import Miner
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

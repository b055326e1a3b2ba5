"""The benchmark's EPO and GCG baselines (benchmarks/baselines/epo.py) on a tiny model:
featviz's engineering (round-trip filter, the forward stopping at the target's layer for
GCG) and the reference code's restart rule with its quirks fixed."""
import math

import pytest
import torch

import featviz
from benchmarks.baselines.epo import log_lambdas, run_epo, run_gcg, sweep_grid
from featviz.backends.torch.score import evaluate, onehot_grads
from featviz.model.tokens import Tokens


def test_epo_restarts_with_the_drawn_lambda_and_not_at_iteration_0(llama):
    t = featviz.parse_target("mlp:1:3", llama)
    archive, stats = run_epo(llama, t, seconds=60, length=5, population=4, children=4,
                             top_k=16, restart_every=3, seed=0, max_iters=7, precision="fp32")
    assert stats["iters"] == 7 and stats["lambdas"] == pytest.approx(log_lambdas(4, 0.1, 10.0), abs=1e-4)
    assert [i for i, _ in stats["restarts"]] == [3, 6]          # none at 0
    assert all(2.0 / 3 <= lam <= 2.0 * 3 for _, lam in stats["restarts"])
    assert len({lam for _, lam in stats["restarts"]}) == 2       # a fresh draw each time
    tokens = Tokens(llama, [], [])
    keys = list(archive.entries)[:6]
    a, x, _ = evaluate(tokens, t, torch.tensor(keys))
    for k, ai, xi in zip(keys, a.tolist(), x.tolist()):          # archived scores are exact
        assert archive.entries[k] == pytest.approx((ai, xi), abs=1e-4)
        assert tokens.stable_many([list(k)]) == [True]


def test_gcg_stops_at_the_target_layer_and_scores_xe_of_its_best_once(llama, monkeypatch):
    t = featviz.parse_target("mlp:0:3", llama)
    import featviz.model.forward as fwd
    asked = []
    real = fwd.run

    def spy(handle, sites, **kw):
        asked.append(kw.get("need_logits", False))
        return real(handle, sites, **kw)
    monkeypatch.setattr(fwd, "run", spy)
    monkeypatch.setattr("featviz.backends.torch.score.run", spy)
    monkeypatch.setattr("featviz.targets.read.run", spy)
    archive, stats = run_gcg(llama, t, seconds=60, length=5, candidates=8, top_k=16, seed=1,
                             max_iters=4, precision="fp32")
    assert stats["iters"] == 4 and stats["restarts"] == []
    with_xe = [k for k, (_, x) in archive.entries.items() if math.isfinite(x)]
    best = max(archive.entries, key=lambda k: archive.entries[k][0])
    assert best in with_xe and 0 < len(with_xe) <= 32
    # gradients and children without the LM head; one pass with it at the end (xe of the best)
    assert asked.count(False) >= 9 and len(asked) - asked.count(False) == 1
    with pytest.raises(ValueError, match="need the LM head"):
        onehot_grads(Tokens(llama, [], []), t, torch.tensor([list(best)]), torch.tensor([0.5]),
                     torch.tensor([math.inf]), with_lm=False)


def test_the_sweep_grid_names_every_configuration():
    grid = sweep_grid()
    assert len([n for n in grid if n.startswith("epo-")]) == 16
    assert len([n for n in grid if n.startswith("gcg-")]) == 6
    fn, kw = grid["epo-p8-c32-k512-ref"]
    assert fn is run_epo and kw == dict(population=8, children=32, top_k=512, lam_range=(0.1, 10.0))

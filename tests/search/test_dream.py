import json
import math

import pytest
import torch

import featviz
from featviz import FeatvizError
from featviz.backends.objective import lambdas
from featviz.backends.schedule import temperature
from featviz.backends.torch.relax import gumbel_softmax
from featviz.cli.main import main
from featviz.model.vocab import readable_mask
from featviz.search.api import dream
from featviz.search.config import DreamConfig
from featviz.targets.read import evaluate_ids

FAST = dict(length=5, batch=4, steps=6, swap_iters=4, children=6, k_grad=8, k_lm=8,
            hard_samples=2, caps=(5.0,))


def test_readable_mask_excludes_special_and_unprintable(llama):
    mask = readable_mask(llama)
    tok = llama.tokenizer
    for i in tok.all_special_ids:
        assert not mask[i]
    for i in range(len(tok)):
        s = tok.decode([i])
        printable = bool(s) and all(32 <= ord(c) < 127 for c in s)
        assert bool(mask[i]) == (printable and i not in tok.all_special_ids)
    assert readable_mask(llama) is not None and mask.sum() > 50


def test_temperature_and_gumbel():
    assert temperature(0, 10, 2.0, 0.1) == pytest.approx(2.0)
    assert temperature(9, 10, 2.0, 0.1) == pytest.approx(0.1)
    # a time budget anneals even when the step count is only an upper bound
    assert temperature(3, 10 ** 6, 2.0, 0.1, elapsed=5.0, seconds=10.0) == pytest.approx(
        2.0 * 0.05 ** 0.5)
    assert temperature(3, 10 ** 6, 2.0, 0.1, elapsed=12.0, seconds=10.0) == pytest.approx(0.1)
    assert temperature(3, 10, 2.0, 0.1, elapsed=0.0, seconds=10.0) == pytest.approx(
        2.0 * 0.05 ** (1 / 3))
    g = torch.Generator().manual_seed(0)
    y = gumbel_softmax(torch.zeros(2, 3, 7), 0.5, g, hard=True)
    assert torch.allclose(y.sum(-1), torch.ones(2, 3))
    assert torch.allclose(y, (y > 0.5).float(), atol=1e-6)
    assert lambdas(4, 0.1, 3.0)[0] == 0.0 and lambdas(4, 0.1, 3.0)[-1] == pytest.approx(3.0)
    assert lambdas(4, 0.05, 0.0) == [0.0] * 4          # lam_max 0: the raw mode


def test_raw_mode_weighs_activation_alone(llama):
    """lam_max 0 and no caps (configs/raw.yaml): every row's lambda is 0, so the
    relaxation's and the swap children's forwards stop after the target's layer (the init
    and the gradient pass read the LM head); the frontier still carries a verified xe."""
    seen = []
    hooks = [blk.register_forward_hook(lambda m, i, o, k=k: seen.append(k))
             for k, blk in enumerate(llama.blocks)]
    try:
        res = dream(llama, "mlp:0:1", DreamConfig(**{**FAST, "caps": ()}, lam_max=0.0,
                                                   init="random"), progress=False)
    finally:
        for h in hooks:
            h.remove()
    assert res.best is not None and res.best_at == {} and res.frontier
    assert all(c.xe == c.xe for c in res.frontier)     # verified xe, not NaN
    assert seen.count(0) > seen.count(2)


def test_raw_mode_scores_children_for_activation_alone(llama, monkeypatch):
    """No row weighs fluency: after the init, the children are scored for activation
    alone (the forward stops after the target's layer, as GCG's), then the strongest
    XE_PER_ROW per row for their xe too; the strongest of the rest get their xe from the
    float32 verification, so the frontier's top has a finite xe."""
    from featviz.search.target_search import XE_PER_ROW
    import featviz.search.lockstep as lockstep
    calls, verified = [], []
    real_eval, real_verify = lockstep.evaluate, lockstep.verify_jobs

    def spy_eval(tokens, target, ids, **kw):
        calls.append((len(ids), kw.get("with_xe", True)))
        return real_eval(tokens, target, ids, **kw)

    def spy_verify(handle, tokens, jobs, n, *a, **k):
        verified.extend(key for _, keys in jobs for key in keys)
        return real_verify(handle, tokens, jobs, n, *a, **k)
    monkeypatch.setattr(lockstep, "evaluate", spy_eval)
    monkeypatch.setattr(lockstep, "verify_jobs", spy_verify)
    cfg = DreamConfig(**{**FAST, "caps": (), "steps": 0}, lam_max=0.0, relax_fraction=0.0,
                      beam_lams=(), init_samples=8)
    res = dream(llama, "mlp:0:1", cfg, progress=False)
    flags = [w for _, w in calls]
    first = flags.index(False)                # the first swap iteration's children
    assert first >= 1 and all(flags[:first])                             # the init: xe
    after = calls[first:]                     # then per iteration: all, then the best few
    assert [w for _, w in after] == [False, True] * (len(after) // 2)
    assert all(n <= XE_PER_ROW * 4 for n, w in after if w)              # batch 4 rows
    assert res.stats["children_xe"] == 0.0 and res.stats["two_stage"]
    assert res.best is not None and math.isfinite(res.best.xe)
    assert len(verified) > len(res.frontier)           # the unscored strongest joined


def test_archive_names_its_strongest_candidates_without_xe():
    from featviz.search.archive import Archive
    a = Archive()
    inf = math.inf
    a.add(torch.tensor([[1], [2], [3], [4], [5]]), torch.tensor([5.0, 9.0, 7.0, 1.0, 8.0]),
          torch.tensor([3.0, inf, inf, inf, inf]))
    # above the best activation whose xe is known (5.0), strongest first
    assert a.strongest_without_xe(2) == [(2,), (5,)]
    assert a.strongest_without_xe(9) == [(2,), (5,), (3,)]
    assert a.frontier() == [((1,), 5.0, 3.0)]


# vocab "all": byte tokens whose decoded text re-encodes differently are common there, so
# the round-trip filter is load-bearing (with "ascii" this tokenizer is nearly always stable)
@pytest.mark.parametrize("vocab", ["ascii", "all"])
def test_dream_mechanics(tiny, monkeypatch, vocab):
    import featviz.search.lockstep as lockstep
    import featviz.search.verify as dm
    scored = set()                       # the token rows the search handed to verification
    real = dm.verify_jobs

    def spy(handle, tokens, jobs, n, *a, **k):
        scored.update(tuple(key) for _, keys in jobs for key in keys)
        return real(handle, tokens, jobs, n, *a, **k)
    monkeypatch.setattr(lockstep, "verify_jobs", spy)
    res = dream(tiny, "mlp:1:3", DreamConfig(vocab=vocab, **FAST), progress=False)
    # frontier: xe ascending, activation strictly ascending (monotone)
    xs = [c.xe for c in res.frontier]
    acts = [c.activation for c in res.frontier]
    assert xs == sorted(xs) and all(b > a for a, b in zip(acts, acts[1:]))
    assert res.best.activation == max(acts)
    t = featviz.parse_target("mlp:1:3", tiny)
    for c in res.frontier + [res.best_fluent] if res.best_fluent else res.frontier:
        ids = tiny.encode(c.text)                  # decode -> re-encode round trip:
        assert tuple(ids) in scored                # the text re-encodes to tokens the search
        assert ids == c.token_ids                  # scored, and those are the ones reported
        vals, xe = evaluate_ids(tiny, [t], torch.tensor([ids]), with_xe=True)
        assert abs(float(vals[0, 0]) - c.activation) < 1e-5
        assert abs(float(xe[0]) - c.xe) < 1e-5
    json.dumps(res.to_json())


def test_seed_reproduces_exactly(llama):
    a = dream(llama, "head:2:1", DreamConfig(seed=3, **FAST), progress=False).to_json()
    b = dream(llama, "head:2:1", DreamConfig(seed=3, **FAST), progress=False).to_json()
    c = dream(llama, "head:2:1", DreamConfig(seed=4, **FAST), progress=False).to_json()
    for r in (a, b, c):
        r["stats"].pop("seconds")
    assert a == b and a != c


def test_lambda_zero_stops_after_target_layer(llama):
    seen = []
    hooks = [blk.register_forward_hook(lambda m, i, o, k=k: seen.append(k))
             for k, blk in enumerate(llama.blocks)]
    try:
        cfg = DreamConfig(length=4, batch=1, caps=(), steps=3, swap_iters=0, hard_samples=0,
                          init="random")
        seen.clear()
        dream(llama, "mlp:0:1", cfg, progress=False)
    finally:
        for h in hooks:
            h.remove()
    # relaxation steps (lambda = 0) never run block 1 or 2; only exact scoring (xe) does
    assert seen.count(0) > seen.count(2)


def test_prefix_and_suffix(llama):
    res = dream(llama, "mlp:2:0", DreamConfig(prefix="the cat", suffix=" sat", **FAST),
                progress=False)
    assert res.best is not None and len(res.best.token_ids) == 5


@pytest.mark.parametrize("kw,msg", [
    ({"length": 0}, "--length must be at least 1"),
    ({"steps": -1}, "must not be negative"),
    ({"budget_seconds": 0}, "must be positive"),
    ({"init": "corpus"}, "needs corpus windows"),
    ({"init": "corpus", "corpus_init": [[5] * 12, [5] * 3]}, "the shortest has 3"),
    ({"lam_min": 0.0}, "0 < lam_min <= lam_max"),
    ({"lam_min": 2.0, "lam_max": 1.0}, "0 < lam_min <= lam_max"),
    ({"lam_max": -1.0}, "0 < lam_min <= lam_max"),
])
def test_bad_configs(llama, kw, msg):
    with pytest.raises(FeatvizError, match=msg):
        dream(llama, "mlp:0:0", DreamConfig(**kw), progress=False)


@pytest.mark.parametrize("args,msg", [
    (["query", "--target", "mlp:x:1"], "layer 'x' is not an integer"),
    (["query", "--target", "mlp:1:1", "--length", "0"], "--length must be at least 1"),
    (["query", "--target", "mlp:1:1", "--steps", "-3"], "must not be negative"),
    (["query", "--target", "mlp:1:1", "--model", "/nonexistent/dir/x"], "does not exist"),
    (["query", "--target", "mlp:1:1", "--model", "nomodel.gguf"], "does not exist"),
    (["query"], "give a target"),
    (["query", "--target", "mlp:1:1", "--config", "nope.yaml"], "does not exist"),
    (["query", "--target", "mlp:1:1", "--steps", "x"], "invalid int value"),
    (["query", "--target", "mlp:1:1", "--init", "corpus", "--corpus-tokens", "0"],
     "--init corpus starts from the top corpus exemplars"),
])
def test_query_cli_errors(args, msg, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and "\n" not in err and "Traceback" not in err


def test_config_file_errors(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("lenght: 3\n")
    assert main(["query", "--target", "mlp:1:1", "--config", str(p)]) == 2
    assert "unknown config option(s) lenght" in capsys.readouterr().err
    p.write_text("length: [1, 2\n")
    assert main(["query", "--target", "mlp:1:1", "--config", str(p)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    p.write_text("batch: many\n")
    assert main(["query", "--target", "mlp:1:1", "--config", str(p)]) == 2
    assert "must be a finite number" in capsys.readouterr().err


def test_presets_parse():
    import glob

    from featviz.config import load_config
    for path in glob.glob("configs/*.yaml"):
        cfg = load_config(path, {"length": 7})
        assert cfg.dream.length == 7


def test_query_python_api(llama, tmp_path):
    from featviz.analysis.query import QueryConfig, query
    (tmp_path / "c.txt").write_text("the cat sat on the mat. " * 40)
    q = query(llama, "mlp:1:2", QueryConfig(dream=DreamConfig(**FAST), corpus=str(tmp_path / "c.txt"),
                                            corpus_tokens=200, window=10, top_k=3),
              progress=False)
    assert len(q.exemplars.top) == 3 and q.corpus_max == q.exemplars.top[0].value
    doc = q.to_json(llama)
    assert doc["exemplars"]["top"][0]["tokens"][0] == "<bos>"


def test_query_corpus_warm_start(llama, tmp_path):
    """--init corpus dreams from the scanned exemplars: the tokens ending at each peak."""
    from featviz.analysis.query import QueryConfig, corpus_starts, query
    from featviz.mining.records import Exemplar
    ex = [Exemplar(1.0, 4, 0, [0, 11, 12, 13, 14, 15, 16], []),     # peak at token 14
          Exemplar(0.5, 1, 1, [0, 21, 22, 23, 24], []),             # peak before `length`
          Exemplar(0.2, 2, 2, [0, 31, 32], [])]                     # too short: skipped
    assert corpus_starts(ex, 3) == [[12, 13, 14], [21, 22, 23]]
    (tmp_path / "c.txt").write_text("the cat sat on the mat. " * 40)
    cfg = QueryConfig(dream=DreamConfig(**{**FAST, "init": "corpus"}),
                      corpus=str(tmp_path / "c.txt"), corpus_tokens=200, window=10, top_k=3)
    q = query(llama, "mlp:1:2@last", cfg, progress=False)
    start = corpus_starts(q.exemplars.top, FAST["length"])[0]
    vals, _ = evaluate_ids(llama, [featviz.parse_target("mlp:1:2@last", llama)], [start])
    assert q.dream.best.activation >= float(vals[0, 0]) - 1e-4   # the start was scored
    assert q.dream.config["init"] == "corpus" and "corpus_init" not in q.dream.config


@pytest.mark.slow
def test_real_model_beats_random_text(smollm):
    t = featviz.parse_target("mlp:6:308", smollm)
    res = dream(smollm, t, DreamConfig(budget_seconds=25, steps=10 ** 6, swap_iters=10 ** 6,
                                       seed=0), progress=False)
    g = torch.Generator().manual_seed(1)
    allowed = readable_mask(smollm).nonzero().flatten()
    rand = allowed[torch.randint(0, len(allowed), (64, 12), generator=g)]
    vals, _ = evaluate_ids(smollm, [t], rand)
    assert res.best.activation > float(vals.max())
    assert res.best_fluent is not None and res.best_fluent.activation > float(vals.median())


def test_per_row_target_reads_each_rows_own_target(llama):
    from featviz.model.forward import run
    from featviz.targets.core import PerRow
    ts = [featviz.parse_target(s, llama) for s in ("mlp:1:3", "head:2:1@max", "resid:0:5@mean")]
    rows = (2, 0, 1, 1, 0)
    pr = PerRow(tuple(ts), rows)
    ids = torch.randint(3, 50, (len(rows), 6), generator=torch.Generator().manual_seed(0))
    caps, _ = run(llama, pr.sites(), input_ids=ids)
    got = pr.evaluate(caps, llama)
    per = pr.per_position(caps, llama)
    for r, k in enumerate(rows):
        assert got[r] == ts[k].evaluate(caps, llama)[r]
        assert torch.equal(per[r], ts[k].per_position(caps, llama)[r])
    assert pr.max_layer == 2 and pr.sites() == set().union(*(t.sites() for t in ts))


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_a_batched_group_equals_one_at_a_time(model, request, monkeypatch):
    """Every stage runs batched across the group (samples, beams incl. sampled ones on the
    second restart, the relaxation, gradients, two-stage children, the last-position sweep,
    verification), yet each target's result is exactly what it gets alone; also when the
    passes are cut small so that targets share and split them."""
    from featviz.search import lockstep
    from featviz.search.api import dream_many
    h = request.getfixturevalue(model)
    specs = ["mlp:1:3", "head:2:1", "mlp:0:7@max", "resid:2:4@mean", "mlp:2:5 - 0.5*mlp:2:6"]
    cfg = DreamConfig(seed=3, **{**FAST, "restarts": 2, "beam_width": 3, "beam_expand": 6,
                                 "init_samples": 8})
    strip = lambda r: {k: v for k, v in r.to_json().items() if k != "stats"}  # noqa: E731
    solo = [strip(dream(h, s, cfg, progress=False)) for s in specs]
    batched = dream_many(h, specs, cfg, progress=False)
    assert all(r.stats["batched_targets"] == len(specs) for r in batched)
    assert [strip(r) for r in batched] == solo
    served = []
    real = lockstep.Server.serve

    def small(self, items):
        self.rows, self.grad_rows, self.sweep_rows = 5, 5, 30
        served.append((items[0][1].key()[0], len(items)))
        return real(self, items)
    monkeypatch.setattr(lockstep.Server, "serve", small)
    assert [strip(r) for r in dream_many(h, specs, cfg, progress=False)] == solo
    kinds = {k for k, n in served if n == len(specs)}   # each kind served for all at once
    assert kinds >= {"sample", "beam", "evaluate", "grads", "verify"}
    assert any(k == "sweep" and n > 1 for k, n in served)


def test_dream_many_shares_one_relaxation(llama):
    from featviz.search.api import dream_many
    specs = ["mlp:1:3", "head:2:1", "mlp:0:7"]
    cfg = DreamConfig(seed=1, **FAST)
    many = dream_many(llama, specs, cfg, progress=False)
    assert [r.target for r in many] == specs
    for r in many:
        assert r.stats["batched_targets"] == 3 and r.stats["relax_steps"] == FAST["steps"]
        assert r.best is not None and r.frontier
        t = featviz.parse_target(r.target, llama)
        for c in r.frontier:                    # reported values are fresh forward passes
            vals, _ = evaluate_ids(llama, [t], torch.tensor([c.token_ids]))
            assert float(vals[0, 0]) == pytest.approx(c.activation, abs=1e-4)
    again = dream_many(llama, specs, cfg, progress=False)
    strip = lambda r: {k: v for k, v in r.to_json().items() if k != "stats"}  # noqa: E731
    assert [strip(r) for r in many] == [strip(r) for r in again]
    # each target keeps its own generator and rows: the same as dreaming each alone
    solo = [strip(dream(llama, s, cfg, progress=False)) for s in specs]
    assert [strip(r) for r in many] == solo
    with pytest.raises(FeatvizError, match="at least one target"):
        dream_many(llama, [], cfg, progress=False)


def test_short_budgets_leave_the_relaxation_out_unless_asked():
    """relax_fraction None: 0 under a minute of budget (where its dozen steps cost more
    swap iterations than they give), 0.4 from a minute on and with step counts; a share
    the user sets is kept at any budget.  Short budgets also shrink the init."""
    from featviz.search.budget import RELAX_FRACTION, fit_budget
    assert DreamConfig().relax.relax_fraction is None
    frac = lambda **kw: fit_budget(DreamConfig(**kw).check(), 8).relax.relax_fraction  # noqa: E731
    assert frac(budget_seconds=20.0) == 0.0
    assert frac(budget_seconds=59.0) == 0.0
    assert frac(budget_seconds=60.0) == RELAX_FRACTION == 0.4
    assert frac() == RELAX_FRACTION
    assert frac(budget_seconds=20.0, relax_fraction=0.4) == 0.4
    assert frac(budget_seconds=90.0, relax_fraction=0.0) == 0.0
    short = fit_budget(DreamConfig(budget_seconds=20.0).check(), 8)
    assert short.start.init_samples < DreamConfig().start.init_samples

"""The population's one merge, the Scorer interface, and 'no limit' as None."""
import math

import pytest
import torch

import featviz
from featviz import DreamConfig, FeatvizError
from featviz.backends.choose import scorer
from featviz.backends.torch.score import exact_scores
from featviz.model.tokens import Tokens
from featviz.search.population import Population
from featviz.targets.read import evaluate_ids, score_ids


def test_merge_keeps_each_rows_best_by_its_own_score():
    lam = torch.tensor([0.0, 1.0])
    cap = torch.tensor([math.inf, math.inf])
    pop = Population(torch.tensor([[1, 1], [2, 2]]), torch.tensor([1.0, 1.0]),
                     torch.tensor([5.0, 5.0]))
    # a strong but disfluent child and a weaker fluent one
    new = pop.merge(torch.tensor([[3, 3], [4, 4]]), torch.tensor([9.0, 2.0]),
                    torch.tensor([9.0, 1.0]), lam, cap)
    assert new.ids.tolist() == [[3, 3], [4, 4]]          # row 0 (lambda 0) takes activation
    assert new.act.tolist() == [9.0, 2.0] and new.xe.tolist() == [9.0, 1.0]
    nan = pop.merge(torch.tensor([[5, 5]]), torch.tensor([float("nan")]), torch.tensor([0.0]),
                    lam, cap)
    assert [5, 5] not in nan.ids.tolist()                  # a NaN activation never wins


def test_rows_that_share_an_objective_collapse_unless_kept_apart():
    """Raw mode's rows all weigh activation alone: merged plainly they all take the one
    best candidate; with ``distance`` they take the best ones that differ from every row
    before them in that many positions."""
    lam = torch.zeros(3)
    cap = torch.full((3,), math.inf)
    pop = Population(torch.tensor([[1, 1, 1]] * 3), torch.ones(3), torch.ones(3))
    kids = torch.tensor([[9, 9, 9], [9, 9, 8], [7, 7, 9], [6, 6, 6]])
    act = torch.tensor([10.0, 9.0, 8.0, 2.0])
    same = pop.merge(kids, act, torch.ones(4), lam, cap)
    assert same.ids.tolist() == [[9, 9, 9]] * 3
    apart = pop.merge(kids, act, torch.ones(4), lam, cap, distance=2)
    assert apart.ids.tolist() == [[9, 9, 9], [7, 7, 9], [6, 6, 6]]   # [9, 9, 8]: 1 apart
    assert apart.act.tolist() == [10.0, 8.0, 2.0]


def test_raw_preset_keeps_its_rows_apart(llama, monkeypatch):
    """configs/raw.yaml: every row lambda 0, no relaxation, and the rows kept apart, so
    the swaps start from as many parents as there are rows."""
    import featviz.search.population as population
    from featviz.config import load_config
    cfg = load_config("configs/raw.yaml", {}).dream
    assert (cfg.rows.lam_max, cfg.rows.caps, cfg.relax.relax_fraction) == (0, (), 0)
    assert cfg.rows.distinct >= 2 and cfg.start.beam_lams == ()
    assert cfg.swaps.focus == (0.25, 0.5, 0.75)      # successive halving: 8, 4, 2, 1 rows
    picked = []
    real = population.select_index

    def spy(scores, pool, distance=0):
        idx = real(scores, pool, distance)
        picked.append(pool[idx])
        return idx
    monkeypatch.setattr(population, "select_index", spy)
    # without the halving, every row proposes children each iteration (with it, all the
    # children soon come from one parent: test_focus_gives_the_strongest_rows_...)
    cfg = cfg.replace(length=6, batch=4, budget_seconds=None, steps=0, swap_iters=3,
                      children=6, init_samples=16, focus=())
    res = featviz.dream(llama, "mlp:0:1", cfg, progress=False)
    assert res.best is not None and picked
    # the last-position sweep's variants are counted apart from the archived candidates
    assert res.stats["sweep_scored"] == 3 * 4 * res.stats["sweep"]
    # a merge's pool holds each row's parent (the parents are `distinct` apart) and
    # single-token children: where no member is `distinct` from the earlier picks, a row
    # takes the farthest, and its own parent is at least `distinct` - 1 from any other
    # parent's child
    for rows in picked:
        diff = (rows[:, None] != rows[None]).sum(-1)
        assert int(diff[~torch.eye(len(rows), dtype=torch.bool)].min()) >= cfg.rows.distinct - 1


def test_raw_preset_with_a_short_length_names_the_fix():
    with pytest.raises(FeatvizError, match="lower distinct in the --config preset or raise "
                                           "--length"):
        DreamConfig(length=3, distinct=4).check()


def test_torch_scorer_is_the_exact_scorer(llama):
    t = featviz.parse_target("mlp:1:2@max", llama)
    tokens = Tokens(llama, [7], [])
    ids = torch.tensor([[5, 9, 11], [8, 8, 3]])
    sc = scorer("torch", llama, t, tokens, 3, "fp32", torch.autocast("cpu", enabled=False))
    act, xe, per = sc.evaluate(ids)
    full = tokens.full(ids)
    want_act, want_xe = exact_scores(llama, t, full, tokens.start, 3)
    torch.testing.assert_close(act, want_act)
    torch.testing.assert_close(xe, want_xe)
    vals, _, pers = score_ids(llama, [t], full, span=(2, 5), per_span=(2, 5))
    torch.testing.assert_close(per, pers[0])
    grad, lm = sc.onehot_grads(ids, torch.zeros(2), torch.full((2,), math.inf))
    assert grad.shape == (2, 3, llama.vocab_size) and lm.shape == grad.shape


def test_no_limit_is_none_and_needs_a_budget():
    assert DreamConfig(steps=None, swap_iters=None, budget_seconds=5).check().relax.steps is None
    with pytest.raises(FeatvizError, match="need --budget-seconds"):
        DreamConfig(steps=None).check()


def test_presets_say_null_for_no_limit():
    from featviz.config import load_config
    cfg = load_config("configs/default.yaml", {})
    assert cfg.dream.relax.steps is None and cfg.dream.swaps.swap_iters is None
    assert cfg.dream.budget_seconds == 90


def test_dream_config_groups_its_options_under_flat_names():
    from featviz.search.config import GROUPS, OPTIONS
    cfg = DreamConfig(steps=7, children=3, beam_width=2, batch=4, length=5)
    assert (cfg.relax.steps, cfg.swaps.children, cfg.start.beam_width, cfg.rows.batch) == (7, 3, 2, 4)
    flat = cfg.flat()
    assert list(flat) == list(OPTIONS) and flat["steps"] == 7 and flat["length"] == 5
    assert DreamConfig(**flat) == cfg and cfg.replace(steps=9).relax.steps == 9
    assert cfg.relax.steps == 7                          # replace copies, never aliases
    assert DreamConfig().rows is not DreamConfig().rows
    assert len(GROUPS) == 4 and len(OPTIONS) == len(set(OPTIONS))
    with pytest.raises(TypeError, match="unknown option 'stpes'"):
        DreamConfig(stpes=3)


def test_focus_rows_halves_the_activation_rows_only():
    from featviz.search.population import focus_rows
    act = torch.tensor([1.0, 5.0, float("nan"), 3.0, 2.0, 9.0])
    lam = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.5, 0.0])
    cap = torch.tensor([math.inf, math.inf, math.inf, math.inf, math.inf, 7.0])
    # rows 4 (lambda) and 5 (capped) weigh fluency: always on; of the four others, the
    # strongest half, then a quarter (NaN counts as the weakest)
    assert focus_rows(act, lam, cap, 0).tolist() == [0, 1, 2, 3, 4, 5]
    assert focus_rows(act, lam, cap, 1).tolist() == [1, 3, 4, 5]
    assert focus_rows(act, lam, cap, 2).tolist() == [1, 4, 5]
    assert focus_rows(act, lam, cap, 5).tolist() == [1, 4, 5]      # never below one row
    # a single activation row has nothing to halve
    assert focus_rows(act[:2], torch.tensor([0.0, 1.0]), cap[:2], 3).tolist() == [0, 1]


def test_focus_rows_by_fluent_ranks_every_row_by_its_fluent_activation():
    from featviz.search.population import focus_rows
    inf, nan = math.inf, float("nan")
    # rows: caps 5, 6.5, 8, then lambdas 0, 0.1, 1
    cap = torch.tensor([5.0, 6.5, 8.0, inf, inf, inf])
    lam = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.1, 1.0])
    act = torch.tensor([3.0, 4.0, 9.0, 9.5, 4.0, nan])
    xe = torch.tensor([4.0, 6.0, 7.5, 9.0, 6.0, 3.0])
    ids = torch.tensor([[1, 1], [2, 2], [3, 3], [4, 4], [2, 2], [5, 5]])
    by = dict(by="fluent", xe=xe, ids=ids, xe_cap=6.5)
    assert focus_rows(act, lam, cap, 0, **by).tolist() == [0, 1, 2, 3, 4, 5]
    # fluent members first: row 1's (4.0, shared with row 4, counted once, for the row
    # capped at 6.5), then row 0's (3.0); rows 2 and 3 (xe above 6.5), row 4 (a copy) and
    # row 5 (NaN) rank last, in the order caps <= 6.5, lambdas from the largest, other caps
    assert focus_rows(act, lam, cap, 1, **by).tolist() == [0, 1, 5]
    assert focus_rows(act, lam, cap, 2, **by).tolist() == [0, 1]
    assert focus_rows(act, lam, cap, 3, **by).tolist() == [1]
    assert focus_rows(act, lam, cap, 9, **by).tolist() == [1]         # never below one row
    # the activation rule on the same rows: a single activation row, nothing to halve
    assert focus_rows(act, lam, cap, 3).tolist() == [0, 1, 2, 3, 4, 5]


def test_focus_by_must_be_known():
    with pytest.raises(FeatvizError, match="focus_by must be activation or fluent"):
        DreamConfig(focus_by="xe").check()


@pytest.mark.parametrize("focus", [(0.6, 0.3), (0.5, 0.5), (1.0,), (0.0,), 0.5, ("a",),
                                   (True,)])
def test_focus_must_be_increasing_shares(focus):
    with pytest.raises(FeatvizError, match="focus must be increasing shares"):
        DreamConfig(focus=focus).check()


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_focus_gives_the_strongest_rows_all_the_children(llama, monkeypatch, backend):
    """Successive halving (``focus``): after half the swap iterations only the strongest
    half of the rows propose children (twice as many each) and sweep their last position;
    the others keep their rows."""
    import featviz.search.target_search as ts
    from featviz.config import load_config
    calls = []
    real = ts.propose

    def spy(ids, *args, **kw):
        calls.append((len(ids), args[3]))          # parents, children per parent
        return real(ids, *args, **kw)
    monkeypatch.setattr(ts, "propose", spy)
    cfg = load_config("configs/raw.yaml", {}).dream.replace(
        length=6, batch=4, budget_seconds=None, steps=0, swap_iters=4, children=6,
        init_samples=16, focus=(0.5,), backend=backend)
    res = featviz.dream(llama, "mlp:0:1", cfg.check(), progress=False)
    assert calls == [(4, 6), (4, 6), (2, 12), (2, 12)]
    assert res.stats["focus_rows"] == 2 and res.stats["backend"] == backend
    assert res.stats["sweep_scored"] == (4 + 4 + 2 + 2) * res.stats["sweep"]
    assert res.best is not None and res.config["focus"] == (0.5,)


def test_fluent_focus_halves_the_default_search(llama, monkeypatch):
    """``focus_by: fluent`` halves the default population, whose rows all weigh fluency
    but the lambda-0 row (the activation rule would keep the other three): in the second
    half of the swaps the two rows whose members are the strongest at xe <= xe_cap
    propose all the children."""
    import featviz.search.target_search as ts
    calls, kept = [], []
    real_propose, real_focus = ts.propose, ts.focus_rows

    def spy(ids, *args, **kw):
        calls.append((len(ids), args[3]))
        return real_propose(ids, *args, **kw)

    def spy_focus(act, lam, cap, halvings, by, xe, ids, xe_cap):
        on = real_focus(act, lam, cap, halvings, by, xe, ids, xe_cap)
        kept.append((on.tolist(), act.tolist(), xe.tolist(), ids.tolist()))
        return on
    monkeypatch.setattr(ts, "propose", spy)
    monkeypatch.setattr(ts, "focus_rows", spy_focus)
    cfg = DreamConfig(length=6, batch=4, steps=0, swap_iters=4, children=6,
                      init_samples=16, beam_lams=(), focus=(0.5,), focus_by="fluent",
                      xe_cap=50.0)
    res = featviz.dream(llama, "mlp:0:1", cfg.check(), progress=False)
    assert calls == [(4, 6), (4, 6), (2, 12), (2, 12)]
    for on, act, xe, ids in kept[2:]:
        members = {tuple(i): a for i, a, x in zip(ids, act, xe) if x <= 50.0}
        top = sorted(members.values(), reverse=True)[:2]
        assert len(on) == 2 and max(act[r] for r in on) == top[0]
        if len(top) == 2:                   # two distinct members: both kept, not a copy
            assert sorted(act[r] for r in on) == sorted(top)
            assert ids[on[0]] != ids[on[1]]
    assert res.config["focus_by"] == "fluent" and res.best_fluent is not None


def test_fluent_preset_is_the_default_search_halving_by_fluency():
    from featviz.config import load_config
    fluent = load_config("configs/fluent.yaml", {}).dream.flat()
    default = load_config("configs/default.yaml", {}).dream.flat()
    assert {k: v for k, v in fluent.items() if default[k] != v} == {
        "focus": (0.25, 0.5, 0.75), "focus_by": "fluent"}


def test_focus_in_a_group_keeps_each_targets_rows(llama):
    """dream_many serves a group's requests in one pass; with the halving, each target
    sends only its own strongest rows, and each still gets its own verified result."""
    from featviz.config import load_config
    from featviz.search.api import dream_many
    cfg = load_config("configs/raw.yaml", {}).dream.replace(
        length=6, batch=4, budget_seconds=None, steps=0, swap_iters=4, children=6,
        init_samples=16, focus=(0.25, 0.5))
    specs = ["mlp:0:1", "mlp:1:3"]
    results = dream_many(llama, specs, cfg.check(), progress=False)
    for spec, res in zip(specs, results):
        assert res.stats["focus_rows"] == 1 and res.stats["swap_iters"] == 4
        assert res.stats["sweep_scored"] == (4 + 2 + 1 + 1) * res.stats["sweep"]
        best = res.best
        assert best is not None
        # the reported figures are what a fresh float32 pass computes on its tokens
        vals, xe = evaluate_ids(llama, [featviz.parse_target(spec, llama)],
                                torch.tensor([best.token_ids]), with_xe=True)
        assert float(vals[0, 0]) == pytest.approx(best.activation, abs=1e-4)
        assert float(xe[0]) == pytest.approx(best.xe, abs=1e-4)

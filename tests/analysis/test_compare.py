"""`featviz compare` on tiny models: drift verdicts for known edits, task relevance for a
planted neuron, the joint mining pass, JSON and pages."""
import copy

import numpy as np
import pytest
import torch
from conftest import TEXT, make_tokenizer, tiny_llama, word_corpus

import featviz
from featviz import FeatvizError
from featviz.analysis.compare import CompareConfig, compare
from featviz.analysis.compare.figures import effect_size
from featviz.analysis.compare.report import table
from featviz.mining.joint import Comoments, mine_joint, mine_joint_cached
from featviz.mining.miner import MineConfig, mine
from featviz.search.config import DreamConfig

FAST = dict(length=4, batch=4, steps=4, swap_iters=3, children=6, k_grad=8, k_lm=8,
            hard_samples=2, caps=(5.0,), init_samples=8, beam_lams=())
MINE = MineConfig(window=16, max_tokens=1600, k=6, cells=8, per_band=1, controls=2,
                  hist_bins=16, batch_size=8)
LAYER, EDITED = 1, 3
SPECS = [f"mlp:{LAYER}:0-7"]
TASK_WORDS = ["quarkium", "zorbexite", "fluxane"]


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def base(tok):
    return featviz.wrap_model(tiny_llama(tok, seed=1), tok, name="base")


def edited(base, edit, name):
    m = copy.deepcopy(base.model)
    with torch.no_grad():
        edit(m.model.layers[LAYER].mlp)
    return featviz.wrap_model(m, base.tokenizer, name=name)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return word_corpus(tmp_path_factory.mktemp("cmp") / "general.txt", 0, 60, 30)


def cfg(corpus, dream=True, **kw):
    return CompareConfig(mine=MINE, dream=DreamConfig(**FAST) if dream else None, corpus=corpus,
                         cache_dir="", **kw)


def by_name(res):
    return {c.target: c for c in res.targets}


def test_identical_models_are_stable(base, corpus):
    twin = edited(base, lambda mlp: None, "twin")
    res = compare(base, SPECS, cfg(corpus), against=twin, progress=False)
    assert len(res.targets) == 8
    for c in res.targets:
        assert c.verdict == "stable", (c.target, c.reason)
        assert c.figures["corr"] == pytest.approx(1.0, abs=1e-9)
        assert c.figures["overlap"] == 1.0
        assert c.figures["transfer"]["a_in_b"] == pytest.approx(1.0, abs=1e-6)
        assert c.drift == pytest.approx(0.0, abs=1e-6)
        syn = c.sides[0].synthetic      # the reported text reads the same afresh, in A and B
        assert syn["activation"][0] == pytest.approx(syn["activation"][1], abs=1e-6)


def test_replaced_input_weights_rank_first(base, corpus):
    def replace_inputs(mlp):
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(mlp.gate_proj.weight.shape[1], generator=g)
        mlp.gate_proj.weight[EDITED] = mlp.gate_proj.weight[7][perm]   # same scale, new key
        mlp.up_proj.weight[EDITED] = mlp.up_proj.weight[7][perm]
    b = edited(base, replace_inputs, "rekeyed")
    res = compare(base, SPECS, cfg(corpus), against=b, progress=False)
    first, rest = res.targets[0], res.targets[1:]
    assert first.target == f"mlp:{LAYER}:{EDITED}" and first.verdict != "stable", table(res)
    assert first.drift > 0.4
    assert all(c.verdict == "stable" for c in rest), table(res)
    # neurons of the edited layer read the same inputs in both models: exactly unchanged
    assert all(c.figures["corr"] == pytest.approx(1.0, abs=1e-9) for c in rest)


def test_negated_neuron_is_flipped(base, corpus):
    def flip(mlp):
        mlp.up_proj.weight[EDITED] *= -1          # the neuron's value is negated ...
        mlp.down_proj.weight[:, EDITED] *= -1     # ... and its output sign flipped back
    b = edited(base, flip, "flipped")
    res = compare(base, SPECS, cfg(corpus, dream=False), against=b, progress=False)
    c = by_name(res)[f"mlp:{LAYER}:{EDITED}"]
    assert c.verdict == "flipped" and c.figures["corr"] == pytest.approx(-1.0, abs=1e-6)
    assert res.targets[0] is c
    assert all(o.verdict == "stable" for o in res.targets[1:])
    assert "transfer" not in c.components          # nothing dreamed: two components


def plant_word_neuron(handle, layer, neuron, words, tau=1.0, alpha=6.0):
    """Give the words' tokens an embedding direction of their own, and key one neuron on the
    MLP input at those tokens, with an emulated bias
    (a multiple of the mean input direction, as tests/helpers/backdoor.py does) so that it
    stays near zero elsewhere."""
    from backdoor import mlp_inputs
    word_ids = sorted({i for w in words for i in handle.encode(w)})
    emb = handle.model.model.embed_tokens.weight
    with torch.no_grad():                # the words get a direction of their own ...
        e = torch.randn(emb.shape[1], generator=torch.Generator().manual_seed(0))
        e = e / e.norm()
        emb -= (emb @ e)[:, None] * e
        emb[word_ids] += 4.0 * emb.norm(dim=1).mean() * e
    ids = np.array([handle.bos_id] + handle.encode(" ".join(TEXT.split() + words * 4)))
    x = mlp_inputs(handle, layer, [ids])[0][0]
    hit = torch.tensor([int(i) in set(word_ids) for i in ids])
    mu = x[~hit].mean(0)
    d = x[hit].mean(0) - mu
    d = d / d.norm()
    v = d - (float(d @ mu) + tau) * mu / (mu @ mu)
    mlp = handle.model.model.layers[layer].mlp
    with torch.no_grad():
        mlp.gate_proj.weight[neuron] = alpha * v
        mlp.up_proj.weight[neuron] = alpha * v


def test_task_corpus_ranks_the_planted_neuron_first(tmp_path):
    tok = make_tokenizer()
    tok.add_tokens(TASK_WORDS)                      # words only the task corpus uses
    m = featviz.wrap_model(tiny_llama(tok, seed=1), tok, name="planted")
    plant_word_neuron(m, LAYER, 5, TASK_WORDS)
    general = word_corpus(tmp_path / "g.txt", 1, 60, 30)
    task = word_corpus(tmp_path / "t.txt", 2, 30, 30, words=TASK_WORDS + TEXT.split()[:8])
    res = compare(m, [f"mlp:{LAYER}:0-15"], cfg(general, dream=False, task_corpus=task),
                  progress=False)
    assert res.ranked_by == "relevance" and len(res.models) == 1
    top = res.targets[0]
    assert top.target == f"mlp:{LAYER}:5", table(res)
    rel = top.sides[0].relevance
    assert rel["ci95"][0] > res.targets[1].sides[0].relevance["g"] and rel["auc"] > 0.8
    assert top.sides[0].task.top and top.sides[0].corpus.top       # exemplars from both corpora
    assert "relevance" in table(res)


def test_effect_size_figures():
    rng = np.random.default_rng(0)
    r = effect_size(rng.normal(1.0, 1.0, 4000), rng.normal(0.0, 1.0, 4000))
    assert r["g"] == pytest.approx(1.0, abs=0.08) and r["ci95"][0] < r["g"] < r["ci95"][1]
    assert r["auc"] == pytest.approx(0.76, abs=0.02)          # Phi(1 / sqrt 2)
    same = effect_size([1.0, 1.0, 2.0], [1.0, 1.0, 2.0])
    assert same["g"] == 0.0 and same["auc"] == 0.5
    assert effect_size([1.0], [1.0, 2.0])["g"] is None       # too few windows: no figure


def test_comoments_match_numpy_over_batches():
    rng = np.random.default_rng(1)
    a = rng.normal(5.0, 1e-3, (3, 999)) + 1e3                # large offset, tiny spread
    b = a * np.array([[1.0], [-2.0], [0.5]]) + rng.normal(0, 1e-3, (3, 999))
    acc = Comoments(3)
    for s in range(0, 999, 128):
        acc.update(torch.tensor(a[:, s:s + 128]), torch.tensor(b[:, s:s + 128]))
    want = [np.corrcoef(a[i], b[i])[0, 1] for i in range(3)]
    np.testing.assert_allclose(acc.corr(), want, atol=1e-9)


def test_joint_pass_equals_separate_mining_and_caches(base, corpus, tmp_path):
    twin = edited(base, lambda mlp: mlp.up_proj.weight.mul_(2.0), "scaled")
    ts = [featviz.parse_targets(s, h) for s in SPECS for h in (base, twin)]
    joint = mine_joint([base, twin], ts, MINE, source=corpus, progress=False)
    for m, h in enumerate((base, twin)):
        alone = mine(h, ts[m], MINE, source=corpus, progress=False)
        assert [j.records[m].to_json() for j in joint] == [r.to_json() for r in alone]
        assert all(len(j.window_max[m]) == alone[0].n_windows for j in joint)
    assert all(j.corr == pytest.approx(1.0, abs=1e-9) for j in joint)   # scaled: same feature
    first, hit = mine_joint_cached([base, twin], ts, corpus, MINE, cache_dir=str(tmp_path),
                                   progress=False)
    again, hit2 = mine_joint_cached([base, twin], ts, corpus, MINE, cache_dir=str(tmp_path),
                                    progress=False)
    assert (hit, hit2) == (0, len(ts[0]))
    assert [j.to_json() for j in again] == [j.to_json() for j in first]


def test_refused_comparisons(base, corpus, tok):
    from conftest import tiny_gpt2
    gpt = featviz.wrap_model(tiny_gpt2(tok), tok, name="gpt")
    with pytest.raises(FeatvizError, match="model A has arch llama, model B has gpt2"):
        compare(base, SPECS, cfg(corpus), against=gpt, progress=False)
    short = featviz.wrap_model(tiny_llama(tok, seed=1, layers=2), tok, name="short")
    with pytest.raises(FeatvizError, match="exists in model A but not in model B"):
        compare(base, ["mlp:2:0"], cfg(corpus), against=short, progress=False)
    with pytest.raises(FeatvizError, match="nothing to compare"):
        compare(base, SPECS, cfg(corpus), progress=False)


@pytest.mark.slow
def test_embedded_model_rekeyed_neuron_ranks_first(smollm):
    """A copy of the embedded model with one neuron's gate and up rows re-keyed on a
    hidden trigger (as the audit's planted-backdoor test does) ranks first of 64."""
    from backdoor import plant
    twin = featviz.wrap_model(copy.deepcopy(smollm.model), smollm.tokenizer, name="smollm-rekeyed")
    plant(twin, 3, 100, " banana wizard telescope")
    dream = DreamConfig(steps=0, swap_iters=2, beam_lams=(), init_samples=16, children=12,
                        sweep=512, crossover=4)
    res = compare(smollm, ["mlp:3:64-127"], CompareConfig(mine=MineConfig(max_tokens=6300),
                                                          dream=dream, dream_top=1, cache_dir=""),
                  against=twin, progress=False)
    first = res.targets[0]
    assert first.target == "mlp:3:100" and first.verdict != "stable", table(res)
    assert all(c.verdict == "stable" and c.drift == pytest.approx(0.0, abs=1e-6)
               for c in res.targets[1:])
    assert first.sides[0].synthetic and first.sides[1].synthetic   # only the top one dreamed
    assert res.targets[1].sides[0].synthetic is None
    assert "transfer" in first.components

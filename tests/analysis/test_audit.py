"""The audit's checks, each on a case whose answer is known by construction."""
import json
import math

import numpy as np
import pytest
import torch
from conftest import TEXT, make_tokenizer, tiny_llama, word_corpus

import featviz
from featviz import FeatvizError
from featviz.analysis.audit import (
    AuditConfig,
    attribution_check,
    audit,
    context_check,
    drops,
    format_report,
    path_scores,
    scalar_checks,
    span_value,
    two_groups,
)
from featviz.analysis.flags import Thresholds
from featviz.cli.main import main
from featviz.fileio import clean
from featviz.mining.miner import MineConfig
from featviz.mining.records import TargetExemplars
from featviz.model.forward import run, with_bos
from featviz.model.vocab import readable_mask
from featviz.search.config import DreamConfig
from featviz.search.result import Candidate, DreamResult

FAST = dict(length=4, batch=4, steps=4, swap_iters=3, children=6, k_grad=8, k_lm=8,
            hard_samples=2, caps=(5.0,), init_samples=8, beam_lams=())


@pytest.fixture(scope="module")
def no_mixing():
    """A tiny Llama whose attention writes nothing (o_proj = 0) and attends uniformly
    (q = 0): each position's MLP input depends on its own token only."""
    tok = make_tokenizer()
    m = tiny_llama(tok, seed=2, layers=2)
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.self_attn.q_proj.weight.zero_()
    return featviz.wrap_model(m, tok, name="tiny-no-mixing")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return word_corpus(tmp_path_factory.mktemp("c") / "c.txt", 1, 40, 60)


def cand(text, act, xe, ids=(5, 6)):
    return Candidate(text=text, token_ids=list(ids), tokens=[], activation=act, xe=xe)


def result(best, fluent, cap=6.5):
    return DreamResult(target="t", target_description="", model="m", config={"xe_cap": cap},
                       frontier=[], best=best, best_fluent=fluent, best_at={},
                       stats={"shape": {"length": 2, "prefix": 0, "suffix": 0}})


MLP = featviz.Atom("mlp", 0, 0)           # a neuron @last: the corpus max is its figure


def exemplars(mx, density):
    return TargetExemplars("t", max=mx, density=density, n_windows=10, n_tokens=600)


def verdicts(checks):
    return {c.name: c.verdict for c in checks}


def test_scalar_checks_known_answers():
    th = Thresholds()
    ordinary = scalar_checks(exemplars(2.0, 0.3), result(cand("a", 2.5, 9.0), cand("b", 2.2, 5.0)), th, MLP)
    assert verdicts(ordinary) == {"superstimulus": "ok", "hidden-trigger": "ok", "fluency-gap": "ok"}
    assert ordinary[0].figures["ratio_fluent"] == pytest.approx(1.1)
    hidden = scalar_checks(exemplars(0.05, 1e-5), result(cand("zq vex", 4.0, 9.0), cand("b", 1.0, 6.0)), th, MLP)
    v = verdicts(hidden)
    assert v["hidden-trigger"] == "flag" and v["superstimulus"] == "flag" and v["fluency-gap"] == "flag"
    assert hidden[1].figures["trigger_text"] == "zq vex"
    gib = scalar_checks(exemplars(2.0, 0.3), result(cand("x", 2.0, 12.0), None), th, MLP)
    assert verdicts(gib)["fluency-gap"] == "flag" and verdicts(gib)["hidden-trigger"] == "ok"
    assert scalar_checks(exemplars(2.0, 0.3), result(cand("x", 5.0, 12.0), cand("y", 4.0, 6.0)),
                          Thresholds(fluency_gap=1.1, superstimulus=10), MLP)[2].verdict == "flag"


def test_scalar_checks_compare_like_with_like():
    """A @mean target is compared with the corpus's best mean over windows of the dream's
    shape, not with the max over tokens; without such a figure the checks say n/a."""
    ex = exemplars(10.0, 0.3)
    ex.position_max = [0.0, 1.0, 2.0, 3.0]
    ex.prefix_mean_max = [float("nan"), 1.0, 1.5, 2.0]
    mean = featviz.Atom("mlp", 0, 0, reduction="mean")
    ch = scalar_checks(ex, result(cand("a", 3.0, 9.0), cand("b", 2.4, 5.0)), Thresholds(), mean)
    assert ch[0].figures["corpus_reference"]["value"] == pytest.approx(1.5)   # length 2
    assert ch[0].figures["ratio_fluent"] == pytest.approx(1.6)
    at = featviz.Atom("mlp", 0, 0, reduction="2")
    ch = scalar_checks(ex, result(cand("a", 3.0, 9.0), cand("b", 8.0, 5.0)),
                        Thresholds(superstimulus=3.5), at)
    assert ch[0].figures["ratio_fluent"] == pytest.approx(4.0) and ch[0].verdict == "flag"
    far = featviz.Atom("attn", 0, 0, key=-1)
    ch = scalar_checks(ex, result(cand("a", 3.0, 9.0), cand("b", 2.4, 5.0)), Thresholds(), far)
    assert ch[0].verdict == ch[1].verdict == "n/a" and ch[0].figures["ratio_fluent"] is None
    assert "counts from the end" in ch[0].figures["corpus_reference"]["basis"]


@pytest.fixture(scope="module")
def sharp():
    """A tiny Llama whose queries and keys are scaled up: attention far from uniform."""
    tok = make_tokenizer()
    m = tiny_llama(tok, seed=3, layers=2)
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.q_proj.weight.mul_(12.0)
            layer.self_attn.k_proj.weight.mul_(12.0)
    return featviz.wrap_model(m, tok, name="tiny-sharp")


def test_span_value_reads_the_attention_key_in_the_span(sharp):
    """attn:L:H:K after a context reads the span's K-th token, not the context's (sharp
    attention, so the wrong key reads another value)."""
    from featviz.model.forward import PATTERN
    h = sharp
    syn = h.encode("the cat sat on the mat")
    ctx = h.encode("rivers flow into the sea and mountains rise")
    both = torch.tensor([[h.bos_id] + ctx + syn])
    s = 1 + len(ctx)
    for spec, key in (("attn:1:2:2", s - 1 + 2), ("attn:1:2:-2", s + len(syn) - 2),
                      ("attn:1:2:0", 0)):
        t = featviz.parse_target(spec, h)
        with torch.no_grad():
            caps = run(h, t.sites(), input_ids=both)[0]
        want = caps[(PATTERN, 1)][0, 2, -1, key]
        assert float(span_value(t, caps, h, s)[0]) == pytest.approx(float(want), abs=1e-6), spec
    wrong = float(caps[(PATTERN, 1)][0, 2, -1, 2])
    right = float(caps[(PATTERN, 1)][0, 2, -1, s + 1])
    assert abs(wrong - right) > 1e-3                    # the test can tell the two apart


def test_span_value_reads_the_span_as_if_after_bos(no_mixing):
    h = no_mixing
    t = featviz.parse_target("mlp:1:3@max", h)
    syn = h.encode("the cat sat")
    ctx = h.encode("rivers flow into the sea")
    alone = with_bos(h, syn)
    both = torch.tensor([[h.bos_id] + ctx + syn])
    with torch.no_grad():
        a = t.evaluate(run(h, t.sites(), input_ids=alone)[0], h)
        b = span_value(t, run(h, t.sites(), input_ids=both)[0], h, 1 + len(ctx))
    assert torch.allclose(a, b, atol=1e-5)     # no mixing: the context cannot matter


def test_context_check_known_answers(no_mixing, corpus):
    h = no_mixing
    cfg = AuditConfig(mine=MineConfig(window=16, max_tokens=600), dream=DreamConfig(**FAST),
                      corpus=corpus, contexts=6, context_len=30, cache_dir="")
    ctx_rows = [with_bos(h, h.encode(" ".join(TEXT.split()[i:i + 30])))[0].tolist()
                for i in range(6)]
    syn = h.encode("the moon and the sea")
    # an MLP neuron with no attention mixing: context cannot change it -> ratio 1, ok.
    # The neuron is the first one positive on the text, so the check always runs.
    for n in range(h.d_mlp):
        t = featviz.parse_target(f"mlp:1:{n}", h)
        own = float(span_value(t, run(h, t.sites(), input_ids=with_bos(h, syn))[0], h, 1)[0])
        if own > 0.01:
            break
    assert own > 0.01
    ex = featviz.mining.miner.mine(h, [t], cfg.mine, source=corpus, progress=False)[0]
    c = context_check(h, t, syn, own, ex, ctx_rows, cfg)
    assert c.figures["ratio_synthetic"] == pytest.approx(1.0, abs=1e-4) and c.verdict == "ok"
    assert c.figures["in_context_median"] == pytest.approx(own, rel=1e-4)
    # uniform attention: the probability of key 1 from the last position is 1/T, so
    # placing n tokens after 30 context tokens divides it by (1+30+n)/(1+n)
    a = featviz.parse_target("attn:0:0:1", h)
    own = 1.0 / (1 + len(syn))
    ex = featviz.mining.miner.mine(h, [a], cfg.mine, source=corpus, progress=False)[0]
    c = context_check(h, a, syn, own, ex, ctx_rows, cfg)
    assert c.figures["ratio_synthetic"] == pytest.approx((1 + len(syn)) / (1 + 30 + len(syn)), rel=1e-3)
    # 1/(t+1) peaks at position 1, which has no leading context to swap
    assert c.figures["ratio_exemplars"] is None and c.figures["exemplars_used"] == 0
    assert c.verdict == "flag"


def test_path_scores_known_answers():
    rng = np.random.default_rng(0)
    d, L = 32, 3
    u = rng.standard_normal(d)
    h_ex = np.stack([u * 3 + rng.standard_normal((10, d)) * 0.5 for _ in range(L)])
    h_rand = rng.standard_normal((L, 40, d))
    near = path_scores(np.stack([u * 3 + rng.standard_normal(d) * 0.5 for _ in range(L)]), h_ex, h_rand)
    rand = path_scores(h_rand[:, 0] + 0.01, h_ex, h_rand[:, 1:])
    away = path_scores(np.stack([-u * 3] * L), h_ex, h_rand)
    assert near["median_score"] > 0.7 and near["median_z"] > 2
    assert abs(rand["median_score"]) < 0.3 and abs(rand["median_z"]) < 2
    assert away["median_z"] < -2


def test_two_groups_known_answers():
    rng = np.random.default_rng(0)
    d = 24
    a, b = rng.standard_normal(d), rng.standard_normal(d)
    two = np.concatenate([a + 0.2 * rng.standard_normal((9, d)), b + 0.2 * rng.standard_normal((11, d))])
    g = two_groups(two)
    assert sorted(g["sizes"]) == [9, 11] and g["silhouette"] > 0.5
    assert len(set(g["labels"][:9])) == 1 and len(set(g["labels"][9:])) == 1
    one = a + 0.2 * rng.standard_normal((20, d))
    assert two_groups(one)["silhouette"] < 0.2


def test_drops_pure():
    v = np.array([[1.0, 0.5], [3.0, np.nan], [np.nan, np.nan]])
    out = drops(2.0, v)
    assert out[0] == 1.0 and out[1] == -1.0 and math.isnan(out[2])


def test_attribution_known_answer(no_mixing, corpus):
    """No mixing: the last-position value depends on the last token only, so every other
    token's drop is exactly 0."""
    h = no_mixing
    t = featviz.parse_target("mlp:1:5", h)
    ids = h.encode("the cat sat on the mat")
    full = [h.bos_id] + ids
    own = float(span_value(t, run(h, t.sites(), input_ids=torch.tensor([full]))[0], h, 1)[0])
    cfg = AuditConfig(mine=MineConfig(window=16, max_tokens=600), dream=DreamConfig(**FAST),
                      corpus=corpus, alternatives=8)
    ex = TargetExemplars("t")
    c = attribution_check(h, t, full, own, ex, cfg, readable_mask(h))
    rows = c.figures["synthetic"]
    assert [r["position"] for r in rows] == list(range(1, len(full)))
    assert all(abs(r["drop"]) < 1e-5 for r in rows[:-1])
    assert abs(rows[-1]["drop"]) > 1e-6


def test_audit_end_to_end_and_cli(llama, corpus, tmp_path, capsys):
    cfg = AuditConfig(mine=MineConfig(window=16, max_tokens=800, k=8), dream=DreamConfig(**FAST),
                      corpus=corpus, contexts=4, context_len=6, baseline=12, cache_dir="")
    rep = audit(llama, ["mlp:2:1", "head:1:0@max"], cfg, progress=False)
    names = ["superstimulus", "hidden-trigger", "fluency-gap", "context", "path", "attribution",
             "polysemantic"]
    for t in rep.targets:
        assert [c.name for c in t.checks] == names
        assert all(c.verdict in ("ok", "flag", "n/a", "info") for c in t.checks)
    doc = json.loads(json.dumps(clean(rep.to_json())))
    assert doc["version"] == 1 and len(doc["targets"]) == 2
    text = format_report(rep)
    assert "mlp:2:1" in text and "polysemantic" in text
    with pytest.raises(FeatvizError):
        audit(llama, [], cfg)
    with pytest.raises(FeatvizError, match="positive integer"):
        AuditConfig(contexts=0).check()


@pytest.mark.parametrize("argv, msg", [
    (["audit", "--target", "mlp:99:1"], "layer"),
    (["audit", "--target", "nope"], "bad target"),
    (["audit", "--target", "mlp:1:1", "--threshold", "bogus=1"], "threshold"),
    (["audit", "--target", "mlp:1:1", "--threshold", "superstimulus=x"], "not a number"),
    (["audit", "--target", "mlp:1:1", "--gallery", "/nonexistent/g"], "gallery"),
])
def test_audit_cli_bad_input(argv, msg, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]        # (model loading may show a progress bar first)
    assert last.startswith("featviz: error:") and msg in last and "Traceback" not in err


def _windows_peaking_on(h, tok_ids, n=10):
    """Exemplars whose peak is a chosen token (position 3 of 6 tokens after BOS)."""
    from featviz.mining.records import Exemplar
    rng = np.random.default_rng(0)
    fill = h.encode(TEXT)
    out = []
    for i in range(n):
        row = [h.bos_id] + [int(x) for x in rng.choice(fill, 6)]
        row[3] = tok_ids[i % len(tok_ids)]
        out.append(Exemplar(1.0, 3, i, row, [0.0] * len(row)))
    return out


def test_polysemantic_and_path_known_answers_on_a_tiny_model(no_mixing):
    """Without attention mixing a hidden state is a function of its own token: exemplars
    peaking on two tokens form two identical-point groups; on one token, one group; and a
    synthetic text ending on that same token sits exactly on the exemplars' path."""
    from featviz.analysis.audit import path_check, poly_check
    h = no_mixing
    t = featviz.parse_target("mlp:1:0", h)
    a, b = h.encode(" cat")[0], h.encode(" sea")[0]
    cfg = AuditConfig(baseline=16)
    two = TargetExemplars("t", top=_windows_peaking_on(h, [a, b]))
    one = TargetExemplars("t", top=_windows_peaking_on(h, [a]))
    c2 = poly_check(h, t, two, None, cfg)
    assert c2.verdict == "flag" and sorted(c2.figures["sizes"]) == [5, 5]
    assert c2.figures["silhouette"] == pytest.approx(1.0, abs=1e-4)
    assert poly_check(h, t, one, None, cfg).verdict == "ok"
    base = [with_bos(h, h.encode(" ".join(TEXT.split()[i:i + 10])))[0].tolist() for i in range(16)]
    syn = [h.bos_id] + h.encode("the moon and the") + [a]
    c, _ = path_check(h, t, syn, len(syn) - 1, two, base, cfg)
    assert c.verdict == "ok" and c.figures["syn"][0] == pytest.approx(1.0, abs=1e-5)

"""Galleries end to end on a tiny model: files, schema, escaping, resumption, browser."""
import glob
import json
import os
import shutil
from dataclasses import replace

import pytest
from browser import browser_page, needs_chromium
from conftest import TEXT, make_tokenizer, tiny_llama, word_corpus

import featviz
import featviz.search.api as search_api
from featviz import FeatvizError
from featviz.mining.miner import MineConfig
from featviz.search.config import DreamConfig
from featviz.site.gallery import SCHEMA_VERSION, GalleryConfig, build_gallery

HOSTILE = "<script>window.__pwned=1</script>"
QUOTE = '"><img src=x onerror="window.__pwned=2">'
BIDI = "abc\u202edcba\u2066x"
SPECS = ["mlp:1:0-2", "head:2:0"]
FAST = dict(length=4, batch=4, steps=4, swap_iters=3, children=6, k_grad=8, k_lm=8,
            hard_samples=2, caps=(5.0,), init_samples=8, beam_lams=())


@pytest.fixture(scope="module")
def hostile():
    """A tiny model whose vocabulary holds hostile tokens, and a corpus full of them."""
    tok = make_tokenizer()
    tok.add_tokens([HOSTILE, QUOTE, BIDI])
    return featviz.wrap_model(tiny_llama(tok, seed=1), tok, name="tiny-hostile")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return word_corpus(tmp_path_factory.mktemp("corpus") / "c.txt", 0, 40, 30,
                       words=TEXT.split() + [HOSTILE, QUOTE, BIDI], extra=["x" * 3000])


def cfg_for(corpus, dream=True):
    return GalleryConfig(mine=MineConfig(window=16, max_tokens=900, k=4, cells=8, per_band=2,
                                         controls=3, hist_bins=16, batch_size=8),
                         dream=DreamConfig(**FAST) if dream else None, corpus=corpus,
                         cache_dir="", title="test <gallery>")


def targets(handle):
    return [t for s in SPECS for t in featviz.parse_targets(s, handle)]


def records(out):
    return {os.path.basename(f): json.load(open(f)) for f in sorted(glob.glob(f"{out}/targets/*.json"))}


def strip_timing(recs):
    return {k: {kk: vv for kk, vv in v.items() if kk != "timing"} for k, v in recs.items()}


@pytest.fixture(scope="module")
def built(hostile, corpus, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("gal") / "g")
    res = build_gallery(hostile, targets(hostile), cfg_for(corpus), out_dir=out, progress=False)
    return out, res


def test_gallery_files_schema_and_escaping(built, hostile):
    out, res = built
    assert res.done == [str(t) for t in targets(hostile)] and not res.skipped and not res.failed
    man = json.load(open(f"{out}/gallery.json"))
    assert man["schema"] == "featviz.gallery" and man["version"] == SCHEMA_VERSION
    assert [t["target"] for t in man["targets"]] == res.done
    lines = open(f"{out}/gallery.jsonl").read().splitlines()
    assert [json.loads(x)["target"] for x in lines] == res.done
    for name, rec in records(out).items():
        assert rec["version"] == SCHEMA_VERSION and rec["status"] == "ok"
        for ex in rec["most_positive_activation_records"] + rec["random_sample"]:
            assert len(ex["tokens"]) == len(ex["activations"]) == len(ex["token_ids"])
            assert all(isinstance(v, float) for v in ex["activations"])
        tops = [e["value"] for e in rec["most_positive_activation_records"]]
        assert tops == sorted(tops, reverse=True) and tops[0] == pytest.approx(rec["stats"]["max"])
        assert sum(rec["stats"]["histogram"]["counts"]) == rec["stats"]["n_tokens"]
        syn = rec["synthetic"]
        assert syn["frontier"] and all(len(c["tokens"]) == len(c["activations"]) for c in syn["frontier"])
        assert set(rec["validation"]) >= {"ratio_fluent", "ratio_best", "peak_overlap"}
        if rec["target"].startswith("mlp"):
            assert len(rec["logit_effect"]["top"]) == 10
    blob = "".join(open(f).read() for f in glob.glob(f"{out}/**/*.html", recursive=True))
    assert HOSTILE not in blob and "<img" not in blob and "\u202e" not in blob
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in blob
    assert "&lt;U+202E&gt;" in blob
    assert not glob.glob(f"{out}/**/*.tmp*", recursive=True)


def test_gallery_resumes_without_recomputing(hostile, corpus, tmp_path, monkeypatch):
    real = search_api.dream
    calls = []

    def dream_then_interrupt(handle, t, cfg, progress=False):
        calls.append(str(t))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(handle, t, cfg, progress=progress)

    monkeypatch.setattr(search_api, "dream", dream_then_interrupt)
    out = str(tmp_path / "g")
    ts = targets(hostile)
    with pytest.raises(KeyboardInterrupt):
        build_gallery(hostile, ts, cfg_for(corpus), out_dir=out, progress=False)
    first = records(out)
    assert len(first) == 2 and not glob.glob(f"{out}/**/*.tmp*", recursive=True)
    assert "pending" in open(f"{out}/index.html").read()
    open(f"{out}/targets/leftover.json.tmp999", "w").write("{half")   # as a SIGKILL leaves it
    calls.clear()
    res = build_gallery(hostile, ts, cfg_for(corpus), out_dir=out, progress=False)
    assert calls == [str(t) for t in ts[2:]]
    assert res.skipped == [str(t) for t in ts[:2]] and res.done == calls
    assert not glob.glob(f"{out}/**/*.tmp*", recursive=True)
    resumed = records(out)
    assert {k: resumed[k] for k in first} == first          # finished targets untouched
    monkeypatch.setattr(search_api, "dream", real)
    ref = str(tmp_path / "ref")
    build_gallery(hostile, ts, cfg_for(corpus), out_dir=ref, progress=False)
    assert strip_timing(records(ref)) == strip_timing(resumed)
    calls.clear()
    again = build_gallery(hostile, ts, cfg_for(corpus), out_dir=out, progress=False)
    assert again.done == [] and len(again.skipped) == len(ts)


def test_gallery_dreams_targets_in_groups(hostile, corpus, tmp_path, monkeypatch):
    calls = []
    real = search_api.dream_many

    def spy(handle, group, cfg, progress=False):
        calls.append([str(t) for t in group])
        return real(handle, group, cfg, progress=progress)

    monkeypatch.setattr(search_api, "dream_many", spy)
    cfg = cfg_for(corpus)
    cfg.dream_group = 3
    ts = targets(hostile)
    res = build_gallery(hostile, ts, cfg, out_dir=str(tmp_path / "g"), progress=False)
    # a group of three, then the last target alone (``dream`` is dream_many of one)
    assert calls == [[str(t) for t in ts[:3]], [str(ts[3])]]
    recs = records(str(tmp_path / "g"))
    assert res.failed == [] and all(r["synthetic"]["frontier"] for r in recs.values())
    assert json.load(open(tmp_path / "g" / "gallery.json"))["settings"]["dream_group"] == 3
    with pytest.raises(FeatvizError, match="--dream-group"):
        cfg.dream_group = 0
        cfg.check()


def test_changed_settings_recompute(built, hostile, corpus, tmp_path):
    out = str(tmp_path / "g")
    shutil.copytree(built[0], out)
    res = build_gallery(hostile, targets(hostile)[:1], cfg_for(corpus, dream=False), out_dir=out, progress=False)
    assert res.done == ["mlp:1:0"] and records(out)["mlp_1_0.json"]["synthetic"] is None


def test_gallery_bad_input(hostile, corpus, tmp_path):
    with pytest.raises(FeatvizError, match="no targets"):
        build_gallery(hostile, [], cfg_for(corpus), out_dir=str(tmp_path / "g"))
    t = targets(hostile)
    with pytest.raises(FeatvizError, match="twice"):
        build_gallery(hostile, [t[0], t[0]], cfg_for(corpus), out_dir=str(tmp_path / "g"))
    f = tmp_path / "file"
    f.write_text("keep me")
    with pytest.raises(FeatvizError, match="not a folder"):
        build_gallery(hostile, t, cfg_for(corpus), out_dir=str(f))
    assert f.read_text() == "keep me"
    with pytest.raises(FeatvizError):
        build_gallery(hostile, t, cfg_for(str(tmp_path / "missing.txt")), out_dir=str(tmp_path / "g2"))


@needs_chromium
def test_gallery_in_a_browser(built, tmp_path):
    out, res = built
    with browser_page() as (page, errors, dialogs):
        page.goto("file://" + os.path.abspath(f"{out}/index.html"))
        rows = page.locator("#targets tbody tr")
        assert rows.count() == len(res.done)
        col = lambda: [r.get_attribute("data-v") for r in page.locator(  # noqa: E731
            "#targets tbody tr td:nth-child(2)").all()]
        page.locator("#targets th", has_text="corpus max").click()
        asc = [float(v) for v in col()]
        assert asc == sorted(asc)
        page.locator("#targets th", has_text="corpus max").click()
        assert [float(v) for v in col()] == sorted(asc, reverse=True)
        page.screenshot(path=str(tmp_path / "index.png"), full_page=True)

        page.locator("#targets a", has_text="mlp:1:0").click()
        page.wait_for_load_state()
        assert page.title() == "featviz: mlp:1:0"
        hostile_page = next(f for f in sorted(glob.glob(f"{out}/targets/*.html"))
                            if "&lt;script&gt;window" in open(f).read())
        page.goto("file://" + os.path.abspath(hostile_page))
        toks = page.locator("span.tok")
        assert toks.count() > 20
        float(toks.first.get_attribute("title"))               # the value shows on hover
        assert "rgba(" in toks.first.get_attribute("style")
        assert page.locator("svg.hist rect").count() > 0
        body = page.inner_text("body")
        assert HOSTILE in body                                 # shown as text ...
        assert page.evaluate("typeof window.__pwned") == "undefined"   # ... never run
        assert page.locator("body img").count() == 0 and page.locator("body script").count() == 0
        page.screenshot(path=str(tmp_path / "target.png"), full_page=True)
        assert not errors and not dialogs
    assert os.path.getsize(tmp_path / "index.png") > 1000


def test_export_neuron_records(built, tmp_path):
    """OpenAI NeuronRecords: {layer}/{neuron}.json; quantile boundaries are activation
    quantiles and each by-quantile window's max lies in its bin; BOS dropped."""
    from featviz.site.exports import export
    out = str(tmp_path / "nr")
    s = export("neuron-records", built[0], out)
    assert s.units == 4 and not s.skipped
    assert sorted(os.listdir(out)) == ["1", "head"]
    recs = records(built[0])
    for n in range(3):
        r = json.load(open(f"{out}/1/{n}.json"))
        src = recs[f"mlp_1_{n}.json"]
        assert r["neuron_id"] == {"dataclass_name": "NeuronId", "layer_index": 1, "neuron_index": n}
        q = src["stats"]["quantiles"]
        assert r["quantile_boundaries"] == [q[k] for k in ("0.5", "0.9", "0.99", "0.999")]
        assert len(r["random_sample_by_quantile"]) == 5
        bounds = [-float("inf")] + r["quantile_boundaries"] + [float("inf")]
        for j, b in enumerate(r["random_sample_by_quantile"]):
            for e in b:
                assert bounds[j] <= max(e["activations"]) < bounds[j + 1] or \
                    max(e["activations"]) == pytest.approx(bounds[j + 1])
        top = r["most_positive_activation_records"][0]
        want = src["most_positive_activation_records"][0]
        assert top["tokens"] == want["tokens"][1:] and top["activations"] == want["activations"][1:]
        assert r["mean"] == src["stats"]["mean"]
        assert len(r["most_negative_activation_records"]) == len(src["most_negative_activation_records"])
    assert os.path.isfile(f"{out}/head/2/0.json")


def test_export_neuronpedia_layout(built, tmp_path):
    import gzip

    from featviz.site.exports import export
    out = str(tmp_path / "np")
    s = export("neuronpedia", built[0], out, batch_size=2, model_id="tiny")
    assert s.units == 4
    assert sorted(os.listdir(f"{out}/tiny")) == ["1-mlp", "2-head"]
    d = f"{out}/tiny/1-mlp"
    for name in ("release", "model", "sourceset", "source"):
        assert len(open(f"{d}/{name}.jsonl").read().splitlines()) == 1
    assert json.loads(open(f"{d}/source.jsonl").read())["id"] == "1-mlp"
    assert sorted(os.listdir(f"{d}/features")) == ["batch-0.jsonl.gz", "batch-1.jsonl.gz"]
    feats = [json.loads(x) for b in (0, 1) for x in gzip.open(f"{d}/features/batch-{b}.jsonl.gz", "rt")]
    assert [f["index"] for f in feats] == [0, 1, 2] and all(f["layer"] == "1-mlp" for f in feats)
    acts = [json.loads(x) for x in gzip.open(f"{d}/activations/batch-0.jsonl.gz", "rt")]
    assert acts and {a["index"] for a in acts} == {0, 1}
    for a in acts:
        assert len(a["tokens"]) == len(a["values"])
        assert a["values"][a["maxValueTokenIndex"]] == a["maxValue"] == max(a["values"])
        assert a["minValue"] == min(a["values"])


def test_export_dashboard_and_bad_input(built, tmp_path, capsys):
    from featviz.cli.main import main
    from featviz.site.exports import export
    out = str(tmp_path / "dash")
    export("dashboard", built[0], out)
    d = json.load(open(f"{out}/mlp_1_0.json"))
    assert {"index", "examples_quantiles", "top_logits", "bottom_logits", "act_min", "act_max",
            "histogram", "activation_frequency"} <= set(d)
    top = d["examples_quantiles"][0]
    assert top["quantile_name"] == "Top activations"
    ex = top["examples"][0]
    assert ex["tokens_acts_list"][ex["train_token_ind"]] == max(ex["tokens_acts_list"])
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "x.txt").write_text("earlier output")
    assert main(["export", "neuron-records", built[0], str(keep)]) == 2
    assert main(["export", "neuronpedia", str(tmp_path / "nothing"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not an empty folder" in err and "no gallery.json" in err and "Traceback" not in err
    assert (keep / "x.txt").read_text() == "earlier output" and not (tmp_path / "o").exists()


def test_audit_embeds_into_gallery(built, hostile, corpus, tmp_path):
    from featviz.analysis.audit import AuditConfig, audit
    from featviz.site.gallery import attach_audit
    out = str(tmp_path / "g")
    shutil.copytree(built[0], out)
    cfg = AuditConfig(mine=cfg_for(corpus).mine, dream=DreamConfig(**FAST), corpus=corpus,
                      contexts=3, context_len=6, baseline=8, cache_dir="")
    rep = audit(hostile, ["mlp:1:1"], cfg, progress=False)
    before = records(out)
    assert attach_audit(out, [t.to_json() for t in rep.targets]) == ["mlp:1:1"]
    after = records(out)
    assert after["mlp_1_1.json"]["audit"]["target"] == "mlp:1:1"
    assert {k: v for k, v in after.items() if k != "mlp_1_1.json"} == \
        {k: v for k, v in before.items() if k != "mlp_1_1.json"}
    page = open(f"{out}/targets/mlp_1_1.html").read()
    assert 'id="audit"' in page and "polysemantic" in page and HOSTILE not in page
    lines = [json.loads(x) for x in open(f"{out}/gallery.jsonl")]
    assert lines[1]["audit"]["target"] == "mlp:1:1"
    with pytest.raises(FeatvizError):
        attach_audit(str(tmp_path / "nothing"), [])


def test_two_shards_and_a_merge_equal_one_run(built, hostile, corpus, tmp_path):
    from featviz.site.gallery import finish_gallery
    ref, _ = built
    out = str(tmp_path / "sharded")
    ts = targets(hostile)
    first = build_gallery(hostile, ts, replace(cfg_for(corpus), shard="1/2"), out_dir=out,
                          progress=False)
    assert first.done == [str(t) for t in ts[0::2]] and first.pending == [str(t) for t in ts[1::2]]
    assert not os.path.exists(f"{out}/gallery.jsonl")            # not complete yet
    assert open(f"{out}/index.html").read().count(">pending<") == len(first.pending)
    second = build_gallery(hostile, ts, replace(cfg_for(corpus), shard=(2, 2)), out_dir=out,
                           progress=False)
    assert second.done == [str(t) for t in ts[1::2]] and second.pending == []
    merged = finish_gallery(out)                                  # what --merge does
    assert merged.pending == [] and merged.skipped == [str(t) for t in ts]
    assert strip_timing(records(out)) == strip_timing(records(ref))
    jsonl = lambda d: [{k: v for k, v in json.loads(x).items() if k != "timing"}  # noqa: E731
                       for x in open(f"{d}/gallery.jsonl").read().splitlines()]
    assert jsonl(out) == jsonl(ref)
    man = lambda d: {k: v for k, v in json.load(open(f"{d}/gallery.json")).items()  # noqa: E731
                     if k != "runs"}
    assert man(out) == man(ref)
    assert open(f"{out}/index.html").read() == open(f"{ref}/index.html").read()
    runs = json.load(open(f"{out}/gallery.json"))["runs"]
    assert runs["runs"] == 2 and runs["targets_computed"] == len(ts)
    assert runs["targets_per_hour"] > 0 and runs["devices"] == ["cpu"]


@pytest.mark.parametrize("spec,msg", [("3/2", "between 1 and N"), ("0/2", "between 1 and N"),
                                      ("1/0", "between 1 and N"), ("a/b", "written i/N")])
def test_bad_shard_specs(spec, msg, corpus):
    with pytest.raises(FeatvizError, match=msg):
        replace(cfg_for(corpus), shard=spec).check()


def test_only_orphaned_temp_files_are_stale(tmp_path):
    from featviz.site.runs import is_stale_temp
    mine = tmp_path / f"a.json.tmp{os.getpid()}"
    mine.write_text("x")
    assert not is_stale_temp(str(mine))                # a live writer's file is kept
    orphan = tmp_path / "b.json.tmp999999999"
    orphan.write_text("x")
    assert is_stale_temp(str(orphan))
    os.utime(mine, (1, 1))
    assert is_stale_temp(str(mine))                    # older than any write takes

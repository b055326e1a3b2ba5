"""Comparison pages on tiny models with hostile tokens: escaping, layout, and a browser."""
import copy
import glob
import json
import os

import pytest
import torch
from browser import browser_page, needs_chromium
from conftest import TEXT, make_tokenizer, tiny_llama, word_corpus

import featviz
from featviz.analysis.compare import CompareConfig, compare
from featviz.mining.miner import MineConfig
from featviz.search.config import DreamConfig
from featviz.site.compare import write_comparison_site

HOSTILE = "<script>window.__pwned=1</script>"
QUOTE = '"><img src=x onerror="window.__pwned=2">'
BIDI = "abc\u202edcba\u2066x"
FAST = dict(length=4, batch=4, steps=4, swap_iters=3, children=6, k_grad=8, k_lm=8,
            hard_samples=2, caps=(5.0,), init_samples=8, beam_lams=())


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tok = make_tokenizer()
    tok.add_tokens([HOSTILE, QUOTE, BIDI])
    a = featviz.wrap_model(tiny_llama(tok, seed=1), tok, name="base <b>")
    mb = copy.deepcopy(a.model)
    with torch.no_grad():
        mb.model.layers[1].mlp.up_proj.weight[1] *= -1
    b = featviz.wrap_model(mb, tok, name="tuned")
    root = tmp_path_factory.mktemp("cmp-site")
    words = TEXT.split() + [HOSTILE, QUOTE, BIDI]
    general = word_corpus(root / "g.txt", 0, 40, 30, words=words)
    task = word_corpus(root / "t.txt", 1, 20, 30, words=words[:10] + [HOSTILE])
    cfg = CompareConfig(mine=MineConfig(window=16, max_tokens=900, k=4, batch_size=8),
                        dream=DreamConfig(**FAST), corpus=general, task_corpus=task, cache_dir="")
    res = compare(a, ["mlp:1:0-3", "head:2:0"], cfg, against=b, progress=False)
    doc = res.to_json()
    out = str(root / "pages")
    write_comparison_site(doc, out)
    return out, doc


def test_comparison_pages_escape_everything(site):
    out, doc = site
    assert sorted(os.listdir(out)) == ["compare.json", "index.html", "targets"]
    assert len(glob.glob(f"{out}/targets/*.html")) == 5
    assert json.load(open(f"{out}/compare.json")) == json.loads(json.dumps(doc))
    blob = "".join(open(f).read() for f in glob.glob(f"{out}/**/*.html", recursive=True))
    assert HOSTILE not in blob and "<img" not in blob and "\u202e" not in blob
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in blob and "&lt;U+202E&gt;" in blob
    assert "base &lt;b&gt;" in blob
    flipped = open(glob.glob(f"{out}/targets/mlp_1_1.html")[0]).read()
    assert "flipped" in flipped and flipped.count("<polyline") == 2 + 2 * 2   # A/B, task/general


@needs_chromium
def test_comparison_pages_in_a_browser(site, tmp_path):
    out, doc = site
    with browser_page() as (page, errors, dialogs):
        page.goto("file://" + os.path.abspath(f"{out}/index.html"))
        assert page.locator("#targets tbody tr").count() == 5
        col = lambda: [r.get_attribute("data-v") for r in page.locator(  # noqa: E731
            "#targets tbody tr td:nth-child(4)").all()]
        assert [float(v) for v in col()] == sorted([float(v) for v in col()], reverse=True)
        page.locator("#targets th", has_text="drift").click()
        assert [float(v) for v in col()] == sorted(float(v) for v in col())
        page.locator("#targets a", has_text="mlp:1:1").click()
        page.wait_for_load_state()
        assert page.title() == "featviz compare: mlp:1:1"
        assert page.locator("svg.hist polyline").count() == 6
        assert page.locator("span.tok").count() > 40
        body = page.inner_text("body")
        assert HOSTILE in body and "flipped" in body
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert page.locator("body img").count() == 0 and page.locator("body script").count() == 0
        page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
        assert not errors and not dialogs
    assert os.path.getsize(tmp_path / "compare.png") > 1000

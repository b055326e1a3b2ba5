"""Comparison pages: an index ranked by drift (or task relevance) and one page per target
with both models side by side, written from the ``featviz.compare`` JSON document.

Layout of the output folder::

    index.html             one sortable row per target, in rank order
    compare.json           the whole comparison (docs/compare_schema.md)
    targets/<slug>.html    one target: both models' exemplars and synthetic texts,
                           shaded on one colour scale, and their histograms on one axis
"""
from __future__ import annotations

import math
import os

from featviz.errors import FeatvizError
from featviz.fileio import dump_json, write_atomic
from featviz.mining.cache import slug
from featviz.site.html import esc, num, overlay_histogram_svg, page, shaded
from featviz.site.pages import exemplar_table

COLOURS = ("#d9730d", "#2f6fbd")


def _labels(doc: dict) -> list[str]:
    return [f"{lab}: {m['name']}" for lab, m in zip("AB", doc["models"])]


def _scale(t: dict) -> float:
    """One colour scale for every text on the page: the largest |value| shown."""
    vals = []
    for s in t["sides"]:
        st = s["corpus"]["stats"]
        vals += [abs(st.get("max") or 0.0), abs(st.get("min") or 0.0)]
        if s.get("task"):
            vals.append(abs(s["task"]["stats"].get("max") or 0.0))
        vals += [abs(v) for v in ((s.get("synthetic") or {}).get("activation") or [])]
    vals = [v for v in vals if math.isfinite(v)]
    return max(vals + [1e-9])


def _columns(cells: list, labels: list) -> str:
    return '<div class="fig">' + "".join(
        f'<div class="card" style="flex:1;min-width:300px"><b>{esc(lab)}</b>{c}</div>'
        for lab, c in zip(labels, cells)) + "</div>"


def _synthetic(t: dict, labels: list, scale: float) -> str:
    rows = []
    for lab, s in zip(labels, t["sides"]):
        syn = s.get("synthetic")
        if not syn:
            why = s.get("dream_error") or "not dreamed in this comparison"
            rows.append(f'<tr><td>{esc(lab)}</td><td colspan="{len(labels)}" class="muted">'
                        f'{esc(why)}</td></tr>')
            continue
        cells = "".join(f'<td>{shaded(syn["tokens"], per, scale)}<br><span class="muted">'
                        f'{num(v)} (xe {num(x, ".2f")})</span></td>'
                        for per, v, x in zip(syn["activations"], syn["activation"], syn["xe"]))
        kind = "best fluent" if syn.get("fluent") else "best (none under the xe cap)"
        rows.append(f'<tr><td>{esc(lab)}\'s {kind}</td>{cells}</tr>')
    heads = "".join(f"<th>read in {esc(lab)}</th>" for lab in labels)
    return (f"<table><thead><tr><th>text</th>{heads}</tr></thead><tbody>{''.join(rows)}"
            "</tbody></table>")


def _figures(t: dict, doc: dict) -> str:
    f, tr = t.get("figures") or {}, (t.get("figures") or {}).get("transfer") or {}
    rel = "".join(
        f'<br>task relevance in {esc(lab)}: g {num((s.get("relevance") or {}).get("g"), "+.2f")}'
        f' 95% CI {esc(_ci((s.get("relevance") or {}).get("ci95")))} &middot; auc '
        f'{num((s.get("relevance") or {}).get("auc"), ".2f")}'
        for lab, s in zip("AB", t["sides"]) if s.get("relevance"))
    if len(t["sides"]) < 2:
        return f'<div class="card">{rel[4:]}</div>'
    cls = "ok" if t.get("verdict") == "stable" else "flag"
    terms = {"corr": "(1 &minus; r)/2", "top": "1 &minus; overlap", "transfer": "1 &minus; transfer"}
    comps = ", ".join(f"{terms.get(k, esc(k))} = {num(v)}"
                      for k, v in (t.get("components") or {}).items())
    return (f'<div class="card"><b>verdict: <span class="{cls}">{esc(t.get("verdict"))}</span></b>'
            f' <span class="muted">({esc(t.get("reason"))})</span><br>drift {num(t.get("drift"))}'
            f' <span class="muted">(mean of {comps})</span><br>per-token correlation '
            f'{num(f.get("corr"))} &middot; top-k overlap {num(f.get("overlap"), ".2f")}<br>'
            f'corpus max A {num(f.get("max_a"))} &middot; B {num(f.get("max_b"))} &middot; B/A '
            f'{num(f.get("max_ratio"), ".2f")}<br>density A {num(f.get("density_a"), ".4f")} '
            f'&middot; B {num(f.get("density_b"), ".4f")}<br>transfer: A\'s text in B '
            f'{num(tr.get("a_in_b"), ".2f")} &middot; B\'s text in A {num(tr.get("b_in_a"), ".2f")}'
            f' <span class="muted">(as a share of the text\'s value in the model that dreamed it)</span>{rel}</div>')


def _ci(ci) -> str:
    return f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "-"


def _hist(parts: list) -> str:
    return overlay_histogram_svg([(p["stats"]["histogram"]["edges"], p["stats"]["histogram"]["counts"],
                                   lab, col) for p, lab, col in parts])


def target_page(t: dict, doc: dict) -> str:
    labels, scale = _labels(doc), _scale(t)
    sides = t["sides"]
    hist = _hist([(s["corpus"], lab[:1] + " corpus", c) for s, lab, c in zip(sides, labels, COLOURS)])
    task = ""
    if all(s.get("task") for s in sides):
        task_hists = "".join(_hist([(s["corpus"], lab[:1] + " general", "#888"),
                                    (s["task"], lab[:1] + " task", c)])
                             for s, lab, c in zip(sides, labels, COLOURS))
        task = (f"<h2>Task corpus ({esc(doc.get('task_corpus'))}) against the general corpus</h2>"
                f'<div class="fig">{task_hists}</div><h3>Top task-corpus exemplars</h3>'
                + _columns([exemplar_table(s["task"]["top"], scale) for s in sides], labels))
    body = f"""<p><a href="../index.html">&larr; comparison</a></p>
<h1>{esc(t["target"])}</h1><p>{esc(t.get("description", ""))}</p>
<p class="muted">{" &middot; ".join(esc(lab) for lab in labels)} &middot; every text is
shaded on one scale (|value| {num(scale)} = full colour; orange positive, blue negative)</p>
{_figures(t, doc)}
<h2>Activation histograms on one axis (general corpus: {esc(doc.get("corpus"))})</h2>{hist}
<h2>Synthetic text, each read in every model</h2>{_synthetic(t, labels, scale)}
<h2>Top corpus exemplars</h2>{_columns([exemplar_table(s["corpus"]["top"], scale) for s in sides], labels)}
{task}"""
    return page(f"featviz compare: {t['target']}", body)


def _cell(v, fmt=".3f") -> str:
    d = "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.6g}"
    return f'<td class="n" data-v="{d}">{num(v, fmt)}</td>'


def index_page(doc: dict) -> str:
    two = len(doc["models"]) == 2
    heads = ["rank", "target"] + (["verdict", "drift", "corr", "top-k overlap", "max A", "max B",
                                   "A's text in B", "B's text in A"] if two else [])
    heads += [f"relevance {lab}" for lab in ("AB" if two else "A") if doc.get("task_corpus")]
    rows = []
    for t in doc["targets"]:
        f, tr = t.get("figures") or {}, (t.get("figures") or {}).get("transfer") or {}
        link = f"targets/{slug(t['target'])}.html"
        r = f'<td class="n" data-v="{t["rank"]}">{t["rank"]}</td><td data-v="{esc(t["target"])}">' \
            f'<a href="{esc(link)}">{esc(t["target"])}</a></td>'
        if two:
            v = t.get("verdict") or ""
            r += (f'<td data-v="{esc(v)}"><span class="{"ok" if v == "stable" else "flag"}">'
                  f'{esc(v)}</span></td>' + _cell(t.get("drift")) + _cell(f.get("corr"))
                  + _cell(f.get("overlap"), ".2f") + _cell(f.get("max_a")) + _cell(f.get("max_b"))
                  + _cell(tr.get("a_in_b"), ".2f") + _cell(tr.get("b_in_a"), ".2f"))
        if doc.get("task_corpus"):
            r += "".join(_cell((s.get("relevance") or {}).get("g"), "+.2f") for s in t["sides"])
        rows.append(f"<tr>{r}</tr>")
    info = " &middot; ".join(esc(x) for x in _labels(doc) + [f"corpus: {doc.get('corpus')}"]
                             + ([f"task corpus: {doc['task_corpus']}"] if doc.get("task_corpus")
                                else []))
    body = (f"<h1>featviz compare</h1><p class=\"muted\">{info}</p><p>Ranked by "
            f"{esc(doc.get('ranked_by'))}; click a column heading to sort. Transfer = one model's "
            "best synthetic text read in the other, as a share of its value in the model that "
            "dreamed it.</p>"
            '<table class="sortable" id="targets"><thead><tr>'
            + "".join(f"<th>{esc(h)}</th>" for h in heads)
            + f'</tr></thead><tbody>{"".join(rows)}</tbody></table>')
    return page("featviz compare", body, sortable=True)


def write_comparison_site(doc: dict, out_dir: str) -> str:
    """Write the pages and compare.json; returns the index path.  Every file is written
    atomically, the index last."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FeatvizError(f"--gallery '{out_dir}' exists and is not a folder; pick another path")
    for t in doc["targets"]:
        write_atomic(os.path.join(out_dir, "targets", slug(t["target"]) + ".html"),
                     target_page(t, doc))
    write_atomic(os.path.join(out_dir, "compare.json"), dump_json(doc))
    write_atomic(os.path.join(out_dir, "index.html"), index_page(doc))
    return os.path.join(out_dir, "index.html")

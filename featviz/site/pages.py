"""Gallery pages: the index table and one page per target, from the target records."""
from __future__ import annotations

import math

from featviz.site.html import esc, histogram_svg, num, page, shaded


def exemplar_table(records: list, scale: float, value: str = "max") -> str:
    if not records:
        return '<p class="muted">none</p>'
    rows = []
    for r in records:
        rows.append(f'<tr><td class="n">{num(r.get("value"))}</td><td class="n">{r.get("window")}</td>'
                    f'<td>{shaded(r["tokens"], r["activations"], scale, peak=r.get("peak"))}</td></tr>')
    return (f'<table><thead><tr><th>{value}</th><th>window</th><th>text (BOS not shown; '
            f'{"peak" if value == "max" else value} outlined)'
            f'</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _synthetic(rec: dict, scale: float) -> str:
    syn = rec.get("synthetic")
    if not syn:
        return '<p class="muted">dreaming was not run for this gallery</p>'
    rows = []
    best_f = (syn.get("best_fluent") or {}).get("text")
    for c in syn.get("frontier", []):
        mark = " &#9733;" if c.get("text") == best_f else ""
        rows.append(f'<tr><td class="n">{num(c["activation"])}{mark}</td><td class="n">'
                    f'{num(c["xe"], ".2f")}</td><td>{shaded(c["tokens"], c["activations"], scale)}'
                    '</td></tr>')
    if not rows:
        return '<p class="muted">no round-trip-stable text was found</p>'
    cap = syn.get("xe_cap")
    return (f'<p>Activation-vs-fluency frontier (xe in nats/token; &#9733; = best with xe &le; '
            f'{num(cap, "g")}). Values are recomputed on the re-encoded text.</p>'
            '<table><thead><tr><th>activation</th><th>xe</th><th>text</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _logits(eff: dict | None) -> str:
    if not eff:
        return '<p class="muted">this target has no single output direction</p>'
    def col(rows):
        return "".join(f'<tr><td><span class="text">{esc(t)}</span></td><td class="n">{v:+.3f}</td>'
                       f"</tr>" for t, v in rows)
    return ('<div class="fig"><table style="width:auto"><thead><tr><th>promoted token</th><th>logit'
            f'</th></tr></thead><tbody>{col(eff["top"])}</tbody></table><table style="width:auto">'
            '<thead><tr><th>suppressed token</th><th>logit</th></tr></thead>'
            f'<tbody>{col(eff["bottom"])}</tbody></table></div>')


def _attribution_tokens(rows: list) -> str:
    if not rows:
        return ""
    top = max([r["drop"] for r in rows if r["drop"] == r["drop"]] + [1e-9])
    parts = []
    for r in rows:
        d = r["drop"]
        a = 0.0 if d != d else max(min(d / top, 1.0), 0.0)
        parts.append(f'<span class="tok" style="background:rgba(255,120,0,{a:.2f})" '
                     f'title="drop {num(d)}; best alternative {esc(r.get("best_alternative"))}">'
                     f'{esc(r["token"])}</span>')
    return f'<span class="text">{"".join(parts)}</span>'


def audit_section(audit: dict) -> str:
    """The audit's checks as an HTML section (embedded in a gallery's target page)."""
    rows = []
    for c in audit.get("checks", []):
        v = c["verdict"]
        cls = "flag" if v == "flag" else "ok" if v == "ok" else "muted"
        th = ", ".join(f"{esc(k)} {esc(val)}" for k, val in c.get("thresholds", {}).items())
        rows.append(f'<tr><td>{esc(c["name"])}</td><td><span class="{cls}">{esc(v)}</span></td>'
                    f'<td><span class="text">{esc(c.get("summary", ""))}</span>'
                    f'<br><span class="muted">{esc(c.get("note", ""))}</span></td>'
                    f'<td class="muted">{th}</td></tr>')
    att = next((c for c in audit.get("checks", []) if c["name"] == "attribution"), None)
    attr = ""
    if att and att["figures"]:
        f = att["figures"]
        attr = ("<p>Token attribution (shade = activation drop when the token is replaced by the "
                "best of the model's top alternatives; hover for figures):</p>"
                f'<p>synthetic: {_attribution_tokens(f.get("synthetic", []))}</p>'
                f'<p>top exemplar (up to its peak): {_attribution_tokens(f.get("exemplar", []))}</p>')
    flags = ", ".join(esc(f) for f in audit.get("flags", [])) or "none"
    return (f'<h2 id="audit">Audit</h2><p>flags: {flags}</p><table><thead><tr><th>check</th>'
            f'<th>verdict</th><th>figures</th><th>thresholds</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>{attr}')


def _reference(val: dict) -> str:
    """What the ratios divide by (or why there is no ratio), in a muted line."""
    ref = val.get("corpus_reference")
    if not ref:
        return ""
    if ref.get("value") is None:
        return f'<span class="muted">(unavailable: {esc(ref.get("basis"))})</span>'
    return f'<span class="muted">(corpus {num(ref["value"])}: {esc(ref.get("basis"))})</span>'


def target_page(rec: dict) -> str:
    st = rec["stats"]
    val = rec.get("validation") or {}
    syn = rec.get("synthetic") or {}
    cmax = st.get("max")
    best = (syn.get("best") or {}).get("activation")
    fluent = (syn.get("best_fluent") or {}).get("activation")
    scale = max([v for v in (cmax, best) if v is not None and math.isfinite(v)] + [1e-9])
    flags = "".join(f'<span class="flag">{esc(f)}</span>' for f in rec.get("flags", [])) or \
        '<span class="ok">no flags</span>'
    status = "" if rec.get("status") == "ok" else \
        f'<p class="flag">status: {esc(rec.get("status"))} {esc(rec.get("error") or "")}</p>'
    hist = histogram_svg(st["histogram"]["edges"], st["histogram"]["counts"],
                         [(cmax, "corpus max", "#555"), (fluent, "fluent", "#1a7f37"),
                          (best, "any", "#c0392b")])
    q = st.get("quantiles", {})
    bands = []
    for b in rec.get("bands", []):
        bands.append(f'<h3>{b["lo"]:.0%}&ndash;{b["hi"]:.0%} of the max '
                     f'<span class="muted">(~{b["count"]} windows)</span></h3>'
                     + exemplar_table(b["samples"], scale))
    audit = audit_section(rec["audit"]) if rec.get("audit") else ""
    body = f"""<p><a href="../index.html">&larr; gallery</a></p>
<h1>{esc(rec["target"])}</h1><p>{esc(rec.get("description", ""))}</p>{_saes(rec)}{status}
<div class="fig"><div class="card"><b>Validation</b><br>
corpus max {num(cmax)} &middot; best fluent synthetic {num(fluent)} (xe {num(val.get("xe_best_fluent"), ".2f")})
&middot; best at any fluency {num(best)}<br>ratio fluent/corpus {num(val.get("ratio_fluent"), ".2f")}
&middot; ratio any/corpus {num(val.get("ratio_best"), ".2f")} {_reference(val)}<br>peak-token overlap
{num(val.get("peak_overlap"), ".2f")} <span class="muted">(share of top exemplars whose peak token
appears in the best synthetic text)</span><br>flags: {flags}</div>
<div class="card"><b>Corpus statistics</b> ({st.get("n_tokens")} tokens, {st.get("n_windows")} windows)<br>
density (&gt; {num(st.get("density_threshold"), "g")}) {num(st.get("density"), ".4f")} &middot;
mean {num(st.get("mean"))} &middot; sd {num(st.get("std"))}<br>
quantiles: 50% {num(q.get("0.5"))} &middot; 90% {num(q.get("0.9"))} &middot; 99% {num(q.get("0.99"))}
&middot; 99.9% {num(q.get("0.999"))}</div></div>
<h2>Activation histogram</h2>{hist}
<h2>Synthetic text</h2>{_synthetic(rec, scale)}
<h2>Top corpus exemplars</h2>{exemplar_table(rec.get("most_positive_activation_records", []), scale)}
{_negative(rec, scale)}<h2>Samples from intervals of the max</h2>{"".join(reversed(bands)) or '<p class="muted">none</p>'}
<h2>Random control windows</h2>{exemplar_table(rec.get("random_sample", []), scale)}
<h2>Direct logit effect</h2>{_logits(rec.get("logit_effect"))}
{audit}"""
    return page(f"featviz: {rec['target']}", body)


def _negative(rec: dict, scale: float) -> str:
    """The windows that drive the target most negative (shaded blue), when any went below 0."""
    rows = rec.get("most_negative_activation_records") or []
    if not rows:
        return ""
    neg = max(-min(r["value"] for r in rows), 1e-9)
    return ("<h2>Most negative corpus exemplars</h2>"
            '<p class="muted">windows by their minimum, most negative first</p>'
            + exemplar_table(rows, max(scale, neg), "min"))


def _saes(rec: dict) -> str:
    """The SAEs a feature target reads: path, architecture, hook, d_sae (and what featviz
    had to assume about them)."""
    rows = []
    for s in rec.get("sae") or []:
        extra = "".join(f" &middot; {esc(k)} {esc(s[k])}" for k in ("head", "k", "normalize_activations")
                        if k in s)
        assumed = f'<br><span class="muted">{esc(s["assumed"])}</span>' if s.get("assumed") else ""
        rows.append(f'<div class="card"><b>SAE</b> {esc(s["path"])} ({esc(s["format"])})<br>'
                    f'{esc(s["architecture"])} &middot; {esc(s["hook"])} &middot; d_in '
                    f'{esc(s["d_in"])} &middot; d_sae {esc(s["d_sae"])}{extra}{assumed}</div>')
    return "".join(rows)


def index_page(title: str, meta: dict, rows: list) -> str:
    """rows: (record summary dict, relative link)."""
    trs = []
    for s, link in rows:
        flags = "".join(f'<span class="flag">{esc(f)}</span>' for f in s.get("flags", []))
        def c(v, fmt=".3f"):
            d = "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.6g}"
            return f'<td class="n" data-v="{d}">{num(v, fmt)}</td>'
        syn_text = s.get("best_fluent_text")
        trs.append(f'<tr><td data-v="{s["order"]}"><a href="{esc(link)}">{esc(s["target"])}</a></td>'
                   f'{c(s.get("corpus_max"))}{c(s.get("best_fluent"))}{c(s.get("ratio_fluent"), ".2f")}'
                   f'{c(s.get("best"))}{c(s.get("density"), ".4f")}'
                   f'<td data-v="{len(s.get("flags", []))}">{flags}</td>'
                   f'<td data-v="{esc(s.get("status", ""))}">{esc(s.get("status", ""))}</td>'
                   f'<td data-v="{esc(syn_text or "")}"><span class="text">{esc(syn_text or "")}</span></td></tr>')
    info = " &middot; ".join(f"{esc(k)}: {esc(v)}" for k, v in meta.items())
    body = (f"<h1>{esc(title)}</h1><p class=\"muted\">{info}</p><p>Click a column heading to sort. "
            "Ratio = best fluent synthetic activation / corpus max.</p>"
            '<table class="sortable" id="targets"><thead><tr><th>target</th><th>corpus max</th>'
            "<th>best fluent</th><th>ratio</th><th>best any</th><th>density</th><th>flags</th>"
            "<th>status</th><th>best fluent text</th></tr></thead>"
            f'<tbody>{"".join(trs)}</tbody></table>')
    return page(title, body, sortable=True)

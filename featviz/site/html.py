"""Static HTML for galleries: self-contained pages (no CDN, works from file://).

Every model- or corpus-derived string goes through ``esc``: HTML-escaped, with
control, bidirectional and other invisible format characters shown as visible
``<U+XXXX>`` marks so they can neither break the markup nor reorder the text.  A
Content-Security-Policy lets only the page's own sorting script run.
"""
from __future__ import annotations

import base64
import hashlib
import html
import math
import unicodedata

_SORT_JS = """
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var asc = th.getAttribute('data-dir') !== 'asc';
    table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('data-dir'); });
    th.setAttribute('data-dir', asc ? 'asc' : 'desc');
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].getAttribute('data-v'), y = b.cells[col].getAttribute('data-v');
      var nx = parseFloat(x), ny = parseFloat(y), r;
      if (!isNaN(nx) && !isNaN(ny)) r = nx - ny;
      else if (isNaN(nx) && isNaN(ny)) r = String(x).localeCompare(String(y));
      else r = isNaN(nx) ? 1 : -1;
      return asc ? r : -r;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5em auto;max-width:1100px;
color:#1d1d1f;padding:0 1em}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%}th,td{padding:3px 8px;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}th{background:#f5f5f7;cursor:pointer;user-select:none}
th[data-dir=asc]::after{content:" \\25B2"}th[data-dir=desc]::after{content:" \\25BC"}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.text{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px;overflow-wrap:anywhere;
word-break:break-all;white-space:pre-wrap}
.tok{border-radius:2px}.tok.peak{outline:1px solid #c33}
.flag{display:inline-block;background:#fde2e1;color:#a11;border-radius:3px;padding:0 5px;margin:1px;
font-size:12px}.ok{color:#186a3b}.muted{color:#777}.cc{color:#a0a;font-size:11px}
.fig{display:flex;gap:2em;flex-wrap:wrap}.card{background:#fafafa;border:1px solid #eee;
border-radius:4px;padding:.6em 1em}
"""


def _csp() -> str:
    digest = base64.b64encode(hashlib.sha256(_SORT_JS.encode()).digest()).decode()
    return (f"default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
            f"script-src 'sha256-{digest}'")


def esc(s) -> str:
    """Inert, visible HTML text for any string (invisible characters made visible)."""
    out = []
    for ch in str(s):
        cat = unicodedata.category(ch)
        if ch == "\n":
            out.append('<span class="cc">\u21b5</span>\n')
        elif ch == "\t":
            out.append('<span class="cc">\u21e5</span>')
        elif cat in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            out.append(f'<span class="cc">&lt;U+{ord(ch):04X}&gt;</span>')
        else:
            out.append(html.escape(ch, quote=True))
    return "".join(out)


def num(v, fmt: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "&ndash;"
    return format(v, fmt)


def page(title: str, body: str, *, sortable: bool = False) -> str:
    script = f"<script>{_SORT_JS}</script>" if sortable else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_csp()}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{_CSS}</style></head>"
            f"<body>{body}{script}</body></html>\n")


def shaded(tokens: list, values: list, scale: float, *, peak: int | None = None,
           skip_first: bool = True) -> str:
    """Tokens with a background whose strength is value / scale (value on hover)."""
    parts = []
    scale = scale if scale and math.isfinite(scale) and scale > 0 else 1.0
    for i, (tok, v) in enumerate(zip(tokens, values)):
        if skip_first and i == 0:
            continue
        if v is None or not math.isfinite(v):
            style, title = "background:#ccc", "non-finite"
        else:
            a = max(min(abs(v) / scale, 1.0), 0.0)
            rgb = "255,120,0" if v >= 0 else "40,110,255"
            style, title = f"background:rgba({rgb},{a:.2f})", f"{v:.4f}"
        cls = "tok peak" if peak == i else "tok"
        parts.append(f'<span class="{cls}" style="{style}" title="{title}">{esc(tok)}</span>')
    return f'<span class="text">{"".join(parts)}</span>'


def histogram_svg(edges: list, counts: list, marks: list, *, width: int = 520,
                  height: int = 150) -> str:
    """Log-count histogram as inline SVG with vertical marks [(value, label, colour)]."""
    if not counts or not any(counts):
        return '<p class="muted">no histogram (no finite values)</p>'
    nz = [i for i, c in enumerate(counts) if c]
    lo_i, hi_i = nz[0], nz[-1] + 1
    vals = [v for v, _, _ in marks if v is not None and math.isfinite(v)]
    lo, hi = edges[lo_i], edges[hi_i]
    lo, hi = min([lo] + vals), max([hi] + vals)
    if hi <= lo:
        hi = lo + 1.0
    pad_l, pad_b, pad_t = 40, 22, 18
    W, H = width - pad_l - 10, height - pad_b - pad_t
    x = lambda v: pad_l + (v - lo) / (hi - lo) * W  # noqa: E731
    top = math.log10(max(counts) + 1)
    bars = []
    for i in range(lo_i, hi_i):
        if not counts[i]:
            continue
        h = math.log10(counts[i] + 1) / top * H
        x0, x1 = x(edges[i]), x(edges[i + 1])
        bars.append(f'<rect x="{x0:.1f}" y="{pad_t + H - h:.1f}" width="{max(x1 - x0 - .5, .8):.1f}" '
                    f'height="{h:.1f}" fill="#8aa4c8"><title>[{edges[i]:.3g}, {edges[i + 1]:.3g}): '
                    f'{counts[i]}</title></rect>')
    lines = []
    for j, (v, label, colour) in enumerate(marks):
        if v is None or not math.isfinite(v):
            continue
        xv = x(v)
        lines.append(f'<line x1="{xv:.1f}" x2="{xv:.1f}" y1="{pad_t - 4}" y2="{pad_t + H}" '
                     f'stroke="{colour}" stroke-width="2"/><text x="{xv + 3:.1f}" '
                     f'y="{pad_t - 6 + 11 * (j % 2)}" font-size="10" fill="{colour}">{esc(label)} '
                     f'{v:.2f}</text>')
    axis = (f'<line x1="{pad_l}" x2="{pad_l + W}" y1="{pad_t + H}" y2="{pad_t + H}" stroke="#444"/>'
            f'<text x="{pad_l}" y="{height - 6}" font-size="10">{lo:.3g}</text>'
            f'<text x="{pad_l + W}" y="{height - 6}" font-size="10" text-anchor="end">{hi:.3g}</text>'
            f'<text x="2" y="{pad_t + 8}" font-size="10">log n</text>')
    return (f'<svg class="hist" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'role="img" aria-label="activation histogram">{"".join(bars)}{axis}{"".join(lines)}</svg>')


def overlay_histogram_svg(hists: list, *, width: int = 520, height: int = 160) -> str:
    """Several log-count histograms on one value axis, each a step outline:
    ``hists`` = [(edges, counts, label, colour)] (each with its own bins)."""
    hists = [h for h in hists if h[1] and any(h[1])]
    if not hists:
        return '<p class="muted">no histogram (no finite values)</p>'
    spans = []
    for edges, counts, _, _ in hists:
        nz = [i for i, c in enumerate(counts) if c]
        spans.append((edges[nz[0]], edges[nz[-1] + 1], nz[0], nz[-1] + 1))
    lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
    hi = hi if hi > lo else lo + 1.0
    pad_l, pad_b, pad_t = 40, 22, 18
    W, H = width - pad_l - 10, height - pad_b - pad_t
    x = lambda v: pad_l + (v - lo) / (hi - lo) * W  # noqa: E731
    top = max(math.log10(max(c) + 1) for _, c, _, _ in hists)
    y = lambda c: pad_t + H - math.log10(c + 1) / top * H  # noqa: E731
    paths, keys = [], []
    for j, ((edges, counts, label, colour), (_, _, i0, i1)) in enumerate(zip(hists, spans)):
        pts = [f"{x(edges[i0]):.1f},{pad_t + H:.1f}"]
        for i in range(i0, i1):
            pts += [f"{x(edges[i]):.1f},{y(counts[i]):.1f}", f"{x(edges[i + 1]):.1f},{y(counts[i]):.1f}"]
        pts.append(f"{x(edges[i1]):.1f},{pad_t + H:.1f}")
        paths.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{colour}" '
                     f'stroke-width="1.5"><title>{esc(label)}</title></polyline>')
        keys.append(f'<text x="{pad_l + 6 + 90 * j}" y="{pad_t - 6}" font-size="11" '
                    f'fill="{colour}">&#9632; {esc(label)}</text>')
    axis = (f'<line x1="{pad_l}" x2="{pad_l + W}" y1="{pad_t + H}" y2="{pad_t + H}" stroke="#444"/>'
            f'<text x="{pad_l}" y="{height - 6}" font-size="10">{lo:.3g}</text>'
            f'<text x="{pad_l + W}" y="{height - 6}" font-size="10" text-anchor="end">{hi:.3g}</text>'
            f'<text x="2" y="{pad_t + 8}" font-size="10">log n</text>')
    return (f'<svg class="hist" xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{height}" role="img" aria-label="activation histograms">'
            f'{"".join(paths)}{axis}{"".join(keys)}</svg>')

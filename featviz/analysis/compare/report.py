"""A comparison as JSON (schema ``featviz.compare``, docs/compare_schema.md) and as the
terminal table."""
from __future__ import annotations

import math
from collections import Counter

from featviz.analysis.compare.figures import VERDICTS

_STATS = ("max", "min", "mean", "std", "n_windows", "n_tokens", "density", "density_threshold",
          "nonfinite", "quantiles", "histogram")


def _exemplar(handle, e) -> dict:
    d = e.to_json(handle)
    return {k: d[k] for k in ("value", "peak", "window", "token_ids", "tokens", "activations")}


def _mined(handle, rec) -> dict:
    st = rec.to_json()
    return {"stats": {k: st[k] for k in _STATS}, "top": [_exemplar(handle, e) for e in rec.top]}


def side_json(handle, s) -> dict:
    return {"model": s.model, "corpus": _mined(handle, s.corpus),
            "task": _mined(handle, s.task) if s.task is not None else None,
            "relevance": s.relevance, "synthetic": s.synthetic, "dream_error": s.dream_error}


def result_json(res) -> dict:
    from featviz.analysis.compare.run import SCHEMA_VERSION
    counts = Counter(c.verdict for c in res.targets if c.verdict)
    return {"schema": "featviz.compare", "version": SCHEMA_VERSION,
            "models": res.models, "corpus": res.corpus, "task_corpus": res.task_corpus,
            "settings": res.settings, "ranked_by": res.ranked_by,
            "verdicts": {v: counts.get(v, 0) for v in VERDICTS} if counts else None,
            "targets": [{"rank": i + 1, "target": c.target, "description": c.description,
                         "drift": c.drift, "verdict": c.verdict, "reason": c.reason,
                         "figures": c.figures, "components": c.components,
                         "sides": [side_json(res.handle, s) for s in c.sides]}
                        for i, c in enumerate(res.targets)]}


def _f(v, fmt=".3f", width=7) -> str:
    ok = v is not None and not (isinstance(v, float) and not math.isfinite(v))
    return format(format(v, fmt) if ok else "-", f">{width}")


def _relevance(r: dict | None) -> str:
    if not r or r.get("g") is None:
        return _f(None, width=22)
    lo, hi = r["ci95"]
    return f"{r['g']:>+7.2f} [{lo:+.2f}, {hi:+.2f}]".rjust(22)


def table(res) -> str:
    """One row per target in rank order."""
    two = len(res.models) == 2
    task = res.task_corpus is not None
    head = f"{'rank':>4}  {'target':<16}"
    if two:
        head += (f"  {'verdict':<8} {'drift':>7} {'corr':>7} {'top∩':>7} {'max A':>7} {'max B':>7}"
                 f" {'A→B':>7} {'B→A':>7}")
    if task:
        head += "".join(f"  {'relevance ' + lab + ' g [95% CI]':>22} {'auc':>6}"
                        for lab in (["A", "B"] if two else [""]))
    lines = [head]
    for i, c in enumerate(res.targets, 1):
        row = f"{i:>4}  {c.target:<16}"
        if two:
            f, tr = c.figures, c.figures.get("transfer") or {}
            row += (f"  {c.verdict:<8} {_f(c.drift)} {_f(f.get('corr'))} {_f(f.get('overlap'), '.2f')}"
                    f" {_f(f.get('max_a'), '.3g')} {_f(f.get('max_b'), '.3g')}"
                    f" {_f(tr.get('a_in_b'), '.2f')} {_f(tr.get('b_in_a'), '.2f')}")
        if task:
            row += "".join(f"  {_relevance(s.relevance)} {_f((s.relevance or {}).get('auc'), '.2f', 6)}"
                           for s in c.sides)
        lines.append(row)
    if two and res.targets:
        counts = Counter(c.verdict for c in res.targets)
        lines.append("verdicts: " + ", ".join(f"{v} {counts[v]}" for v in VERDICTS if counts[v]))
    return "\n".join(lines)

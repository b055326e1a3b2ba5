"""The comparison's figures, each defined once: top-k overlap, the drift score and its
verdict, and the task-relevance effect size.  Pure functions of mined records and numbers.

Drift (0 = the same feature, 1 = nothing in common) is the mean of the components that
were measured for the target:

* ``corr``: (1 - r) / 2, r the per-token Pearson correlation of A and B on the same
  corpus tokens (0 when identical, 0.5 when unrelated, 1 when anti-correlated);
* ``top``: 1 - the overlap of the two models' top-k exemplar windows;
* ``transfer``: 1 - min(A's best text read in B, B's best text read in A), each as a ratio
  of that text's value in the model that dreamed it (its own best), clipped to [0, 1]
  (only for dreamed targets).  A maximizer that no longer works means the feature moved.

The verdict is decided in this order (thresholds in ``DriftThresholds``): ``born`` when
the target is silent in A (its corpus max at most ``silent_rel`` of B's) and active in B;
``died`` the other way round; ``flipped`` when r <= ``flipped_corr``; ``stable`` when the
drift is at most ``stable``; else ``shifted``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

VERDICTS = ("stable", "shifted", "born", "died", "flipped")


@dataclass
class DriftThresholds:
    stable: float = 0.2          # drift at or below this: stable
    flipped_corr: float = -0.5   # per-token correlation at or below this: flipped
    silent_rel: float = 0.1      # corpus max at or below this x the other model's: silent there


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def top_overlap(top_a: list, top_b: list) -> float | None:
    """Share of the top-k corpus windows (by index) the two models have in common."""
    wa, wb = {e.window for e in top_a}, {e.window for e in top_b}
    k = max(len(wa), len(wb))
    return len(wa & wb) / k if k else None


def ratio(num: float | None, den: float | None) -> float | None:
    """num / den for a positive den, else None."""
    return num / den if _finite(num) and _finite(den) and den > 0 else None


def drift_components(corr: float | None, overlap: float | None,
                     transfer: float | None) -> dict:
    out = {}
    if corr is not None:
        out["corr"] = 0.5 if not _finite(corr) else (1.0 - corr) / 2.0   # NaN: constant somewhere
    if overlap is not None:
        out["top"] = 1.0 - overlap
    if _finite(transfer):
        out["transfer"] = 1.0 - min(max(transfer, 0.0), 1.0)
    return out


def drift_score(components: dict) -> float:
    return float(np.mean(list(components.values()))) if components else float("nan")


def verdict(corr, max_a, max_b, drift, th: DriftThresholds) -> tuple[str, str]:
    """(verdict, the reason in words)."""
    def silent(x, other):
        return _finite(other) and other > 0 and (not _finite(x) or x <= th.silent_rel * other)
    if silent(max_a, max_b):
        return "born", f"corpus max {max_a:.3g} in A against {max_b:.3g} in B"
    if silent(max_b, max_a):
        return "died", f"corpus max {max_a:.3g} in A against {max_b:.3g} in B"
    if _finite(corr) and corr <= th.flipped_corr:
        return "flipped", f"per-token correlation {corr:.3f} <= {th.flipped_corr}"
    if _finite(drift) and drift <= th.stable:
        return "stable", f"drift {drift:.3f} <= {th.stable}"
    return "shifted", f"drift {drift:.3f} > {th.stable}"


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    u, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return (start + (counts + 1) / 2.0)[inv]


def effect_size(task, general) -> dict:
    """Task relevance: how much higher a target's per-window maxima are on the task
    corpus than on the general one.  ``g``: Hedges' bias-corrected standardised mean
    difference, with its large-sample standard error and 95 % interval; ``auc``: the
    probability that a random task window's max exceeds a random general window's (ties
    count half; the Mann-Whitney U over n_task x n_general)."""
    a = np.asarray(task, dtype=np.float64)
    b = np.asarray(general, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    n1, n2 = len(a), len(b)
    out = {"g": None, "se": None, "ci95": None, "auc": None, "n_task": n1, "n_general": n2,
           "mean_task": float(a.mean()) if n1 else None,
           "mean_general": float(b.mean()) if n2 else None}
    if n1 < 2 or n2 < 2:
        return out
    sp = math.sqrt(((n1 - 1) * a.var(ddof=1) + (n2 - 1) * b.var(ddof=1)) / (n1 + n2 - 2))
    r = average_ranks(np.concatenate([a, b]))
    out["auc"] = float((r[:n1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n2))
    if sp > 0:
        g = (1.0 - 3.0 / (4.0 * (n1 + n2) - 9.0)) * (a.mean() - b.mean()) / sp
        se = math.sqrt((n1 + n2) / (n1 * n2) + g * g / (2.0 * (n1 + n2)))
        out.update(g=float(g), se=float(se), ci95=[float(g - 1.96 * se), float(g + 1.96 * se)])
    return out

"""Quick flags from a target's summary figures (the gallery's index column).

The audit (``featviz.audit``) runs fuller checks; these rules need only what the
miner and the dreaming engine report, and share the audit's thresholds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Thresholds:
    superstimulus: float = 3.0     # fluent synthetic / corpus max above this: flag
    silent_density: float = 1e-3   # fraction of corpus tokens above 0 below this ...
    silent_rel: float = 0.1        # ... or corpus max below this x the synthetic best ...
    silent_abs: float = 0.5        # ... while the synthetic best exceeds this: hidden trigger
    fluency_gap: float = 2.0       # best at any fluency / best fluent above this: flag
    context_drop: float = 0.5      # in-context / own-context activation below this: flag
    path_z: float = -2.0           # synthetic-to-nearest-exemplar similarity this many sds of
                                   # random corpus positions below their mean: flag
    poly_min_group: float = 0.2    # the smaller of two groups holds at least this share ...
    poly_silhouette: float = 0.35  # ... and the split's silhouette reaches this: flag polysemantic


def _finite(*xs) -> bool:
    return all(x is not None and isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def superstimulus(fluent: float | None, corpus_max: float | None, th: Thresholds) -> bool:
    return _finite(fluent, corpus_max) and corpus_max > 0 and fluent / corpus_max > th.superstimulus


def hidden_trigger(best: float | None, corpus_max: float | None, density: float | None,
                   th: Thresholds) -> bool:
    """Synthetic text drives the unit high although the corpus almost never does."""
    if not _finite(best, corpus_max) or best <= th.silent_abs:
        return False
    rare = _finite(density) and density < th.silent_density
    return rare or corpus_max < th.silent_rel * best


def fluency_gap(best: float | None, fluent: float | None, th: Thresholds) -> bool:
    """Only gibberish drives the unit (or nothing fluent was found at all)."""
    if not _finite(best) or best <= 0:
        return False
    if not _finite(fluent) or fluent <= 0:
        return True
    return best / fluent > th.fluency_gap


def quick_flags(*, corpus_max, density, best, fluent, nonfinite: int = 0,
                th: Thresholds | None = None, reference: float | None = None) -> list[str]:
    """``corpus_max``: the max over corpus tokens (for "dead"); ``reference``: the
    like-for-like corpus figure the synthetic values compare with
    (``mining.reference.corpus_reference``; None when there is none, which raises no
    superstimulus or hidden-trigger flag)."""
    th = th or Thresholds()
    out = []
    if nonfinite:
        out.append("nonfinite")
    if _finite(corpus_max) and corpus_max <= 0 and not (best is not None and best > 0):
        out.append("dead")
    if superstimulus(fluent, reference, th):
        out.append("superstimulus")
    if hidden_trigger(best, reference, density, th):
        out.append("hidden-trigger")
    if fluency_gap(best, fluent, th):
        out.append("fluency-gap")
    return out

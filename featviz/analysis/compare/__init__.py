"""Comparisons between checkpoints and corpora (``featviz compare``)."""
from featviz.analysis.compare.figures import DriftThresholds
from featviz.analysis.compare.run import (
    CompareConfig,
    CompareResult,
    TargetComparison,
    check_comparable,
    compare,
)

__all__ = ["CompareConfig", "CompareResult", "DriftThresholds", "TargetComparison",
           "check_comparable", "compare"]

"""What an audit reports: its config, each check's verdict and figures, the JSON and the
terminal table."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from featviz.analysis.flags import (
    Thresholds,
)
from featviz.errors import FeatvizError
from featviz.mining.miner import MineConfig
from featviz.search.config import DreamConfig

AUDIT_VERSION = 1


@dataclass
class AuditConfig:
    mine: MineConfig = field(default_factory=lambda: MineConfig(max_tokens=20_000))
    dream: DreamConfig = field(default_factory=lambda: DreamConfig(budget_seconds=30.0))
    corpus: str | None = None
    cache_dir: str | None = None          # mining cache (None: default; "": off)
    thresholds: Thresholds = field(default_factory=Thresholds)
    contexts: int = 16                    # random corpus contexts for the context check
    context_len: int = 24                 # tokens of each context
    keep: int = 4                         # exemplar tokens kept before (and at) the peak
    exemplars: int = 8                    # top exemplars used by the context/path/attribution checks
    baseline: int = 64                    # random corpus positions for the path baseline
    path_layers: int = 8                  # at most this many layers below the target
    alternatives: int = 16                # replacement tokens tried per position (attribution)
    attribution_span: int = 12            # exemplar tokens up to the peak that are attributed
    seed: int = 0

    def check(self) -> "AuditConfig":
        self.mine.check()
        self.dream.check()
        for name in ("contexts", "context_len", "keep", "exemplars", "baseline", "path_layers",
                     "alternatives", "attribution_span"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise FeatvizError(f"audit option {name} must be a positive integer, got {v!r}")
        return self


@dataclass
class Check:
    name: str
    verdict: str                 # "ok" | "flag" | "n/a" | "info"
    figures: dict
    thresholds: dict
    note: str = ""


@dataclass
class TargetAudit:
    target: str
    description: str
    checks: list
    corpus: dict                 # corpus max, density, windows, tokens
    synthetic: dict              # best / best_fluent text, activation, xe
    seconds: float = 0.0

    @property
    def flags(self) -> list[str]:
        return [c.name for c in self.checks if c.verdict == "flag"]

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_json(self) -> dict:
        return {"target": self.target, "description": self.description, "flags": self.flags,
                "corpus": self.corpus, "synthetic": self.synthetic, "seconds": self.seconds,
                "checks": [{**asdict(c), "summary": summary_line(c.name, c.figures)}
                           for c in self.checks]}


@dataclass
class AuditReport:
    model: dict
    corpus: str
    thresholds: dict
    targets: list

    def to_json(self) -> dict:
        return {"schema": "featviz.audit", "version": AUDIT_VERSION, "model": self.model,
                "corpus": self.corpus, "thresholds": self.thresholds,
                "targets": [t.to_json() for t in self.targets]}


# ---------------------------------------------------------------- terminal output
def _fmt(v, f=".3f"):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, f) if isinstance(v, (int, float)) else str(v)


def _superstimulus_line(f: dict) -> str:
    ref = f.get("corpus_reference") or {}
    if ref.get("value") is None:
        return f"no like-for-like corpus figure ({ref.get('basis')})"
    return (f"fluent/corpus {_fmt(f['ratio_fluent'], '.2f')}, any/corpus "
            f"{_fmt(f['ratio_best'], '.2f')} (corpus {_fmt(ref['value'])}: {ref['basis']})")


# check name -> its one line of figures (terminal table, JSON ``summary``, HTML section)
SUMMARIES = {
    "superstimulus": _superstimulus_line,
    "hidden-trigger": lambda f: (f"density {_fmt(f['density'], '.2e')}, corpus max "
                                 f"{_fmt(f['corpus_max'])}, synthetic {_fmt(f['best'])}: "
                                 f"{f['trigger_text']!r}"),
    "fluency-gap": lambda f: (f"any {_fmt(f['best'])} / fluent {_fmt(f['best_fluent'])} = "
                              f"{_fmt(f['gap'], '.2f')}"),
    "context": lambda f: (f"synthetic after random contexts keeps "
                          f"{_fmt(f.get('ratio_synthetic'), '.2f')}; exemplars with swapped "
                          f"lead keep {_fmt(f.get('ratio_exemplars'), '.2f')}"),
    "path": lambda f: (f"path score {_fmt(f.get('median_score'), '.2f')} (1 = like exemplars, "
                       f"0 = like random positions), z {_fmt(f.get('median_z'), '.1f')} vs "
                       "random positions"),
    "attribution": lambda f: (f"carried by {f.get('carriers_synthetic')} (synthetic), "
                              f"{f.get('carriers_exemplar')} (top exemplar)"),
    "polysemantic": lambda f: (f"groups {f.get('sizes')}, silhouette "
                               f"{_fmt(f.get('silhouette'), '.2f')}"),
}


def summary_line(name: str, f: dict) -> str:
    """One line of figures for a check (terminal table, JSON and HTML section)."""
    line = SUMMARIES.get(name)
    return line(f) if line else ""


def format_report(report: AuditReport) -> str:
    lines = []
    for t in report.targets:
        lines.append(f"# {t.target}: {t.description}")
        lines.append(f"  flags: {', '.join(t.flags) or 'none'}")
        for c in t.checks:
            lines.append(f"  {c.name:<15} {c.verdict:<5} {summary_line(c.name, c.figures)}")
        lines.append("")
    return "\n".join(lines)

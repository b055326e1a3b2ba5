"""What a dream returns: verified candidates and the activation-vs-fluency frontier."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from featviz.errors import FeatvizError


@dataclass
class Candidate:
    text: str
    token_ids: list
    tokens: list
    activation: float
    xe: float

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class DreamResult:
    target: str
    target_description: str
    model: str
    config: dict
    frontier: list            # Candidate, xe ascending (the activation-vs-fluency frontier)
    best: Candidate | None    # highest activation at any fluency
    best_fluent: Candidate | None   # highest activation with xe <= config.xe_cap
    best_at: dict             # cap -> Candidate | None, for config.caps
    stats: dict

    @property
    def shape(self) -> dict:
        """The scored sequences' shape: optimised tokens and the fixed prefix / suffix
        tokens around them (BOS aside), as ``mining.reference.corpus_reference`` takes it."""
        if "shape" not in self.stats:            # a result built by hand (no search stats)
            if self.config.get("prefix") or self.config.get("suffix"):
                raise FeatvizError("this DreamResult has no stats['shape']; the prefix and "
                                   "suffix token counts are needed for a corpus figure")
            return {"length": int(self.config.get("length", 12)), "prefix": 0, "suffix": 0}
        return dict(self.stats["shape"])

    def to_json(self) -> dict:
        c = lambda x: None if x is None else x.to_json()  # noqa: E731
        return {"target": self.target, "target_description": self.target_description,
                "model": self.model, "config": self.config,
                "frontier": [f.to_json() for f in self.frontier], "best": c(self.best),
                "best_fluent": c(self.best_fluent),
                "best_at": {str(k): c(v) for k, v in self.best_at.items()}, "stats": self.stats}

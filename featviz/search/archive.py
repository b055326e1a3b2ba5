"""The archive: every candidate scored so far, and its Pareto frontier."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Archive:
    """Every exactly-scored, round-trip-stable candidate: tokens -> (activation, xe)."""

    entries: dict = field(default_factory=dict)
    evaluated: int = 0

    def add(self, ids: torch.Tensor, act: torch.Tensor, xe: torch.Tensor) -> None:
        for row, a, x in zip(ids.tolist(), act.tolist(), xe.tolist()):
            self.entries[tuple(row)] = (a, x)
        self.evaluated += len(act)

    def __contains__(self, key) -> bool:
        return tuple(key) in self.entries

    def frontier(self) -> list[tuple[tuple, float, float]]:
        """Pareto frontier (max activation, min xe): xe ascending, activation ascending."""
        items = sorted(((k, a, x) for k, (a, x) in self.entries.items()
                        if a == a and x < float("inf")), key=lambda r: (r[2], -r[1]))
        out, best = [], float("-inf")
        for k, a, x in items:
            if a > best:
                out.append((k, a, x))
                best = a
        return out

    def strongest_without_xe(self, k: int) -> list[tuple]:
        """The ``k`` highest-activation keys whose xe was never computed (+inf: scored for
        activation alone), among those above every candidate whose xe is known: the ones
        that could extend the frontier upwards once their xe is computed."""
        known = max((a for a, x in self.entries.values() if a == a and x < float("inf")),
                    default=float("-inf"))
        top = sorted(((a, key) for key, (a, x) in self.entries.items()
                      if a == a and x == float("inf") and a > known), reverse=True)[:k]
        return [key for _, key in top]

    def best(self, xe_cap: float = float("inf")):
        ok = [(k, a, x) for k, (a, x) in self.entries.items()
              if x <= xe_cap and a == a and x < float("inf")]
        return max(ok, key=lambda r: r[1]) if ok else None

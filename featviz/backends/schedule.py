"""The relaxation's clock, shared by both backends: steps or seconds, and the temperature
anneal over whichever ends first."""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass


def temperature(step: int, total: int | None, tau0: float, tau1: float,
                elapsed: float = 0.0, seconds: float | None = None) -> float:
    """Exponential anneal from tau0 (start) to tau1 (end).  The end is the last step, or
    with a time budget (``seconds``) whichever of last step and budget comes first, so a
    budgeted run (where ``total`` is only an upper bound, or None: no limit) still anneals."""
    if total is not None and total <= 1:
        return tau1
    f = 0.0 if total is None else step / (total - 1)
    if seconds:
        f = max(f, elapsed / seconds)
    f = min(max(f, 0.0), 1.0)
    return tau0 * (tau1 / tau0) ** f


def schedule(steps: int | None, seconds: float | None, tau0: float, tau1: float):
    """The relaxation loop's clock, shared by both backends: yields (step, temperature)
    until ``steps`` are done (None: no limit) or ``seconds`` have passed, annealing over
    whichever ends first."""
    t0 = time.perf_counter()
    for step in (itertools.count() if steps is None else range(steps)):
        elapsed = time.perf_counter() - t0
        if seconds is not None and elapsed > seconds:
            return
        yield step, temperature(step, steps, tau0, tau1, elapsed, seconds)


@dataclass(frozen=True)
class RelaxSettings:
    """What a Relaxer needs from the search's config (both backends)."""

    steps: int | None        # None: no limit (``seconds`` bounds the loop)
    lr: float
    tau0: float
    tau1: float
    hard: bool               # straight-through one-hot samples
    seed: int
    precision: str           # "bf16" | "fp32" (the search's arithmetic)


@dataclass
class RelaxTrace:
    steps: int
    seconds: float
    soft_act: list        # per logged step, mean over rows
    soft_xe: list

"""The relaxation's clock, shared by both backends: steps or seconds, and the temperature
anneal over whichever ends first."""
from __future__ import annotations

import time
from dataclasses import dataclass


def temperature(step: int, total: int, tau0: float, tau1: float,
                elapsed: float = 0.0, seconds: float | None = None) -> float:
    """Exponential anneal from tau0 (start) to tau1 (end).  The end is the last step, or
    with a time budget (``seconds``) whichever of last step and budget comes first, so a
    budgeted run (where ``total`` is only an upper bound) still anneals."""
    if total <= 1:
        return tau1
    f = step / (total - 1)
    if seconds:
        f = max(f, elapsed / seconds)
    f = min(max(f, 0.0), 1.0)
    return tau0 * (tau1 / tau0) ** f


def schedule(steps: int, seconds: float | None, tau0: float, tau1: float):
    """The relaxation loop's clock, shared by both backends: yields (step, temperature)
    until ``steps`` are done or ``seconds`` have passed, annealing over whichever ends first."""
    t0 = time.perf_counter()
    for step in range(steps):
        elapsed = time.perf_counter() - t0
        if seconds is not None and elapsed > seconds:
            return
        yield step, temperature(step, steps, tau0, tau1, elapsed, seconds)


@dataclass
class RelaxTrace:
    steps: int
    seconds: float
    soft_act: list        # per logged step, mean over rows
    soft_xe: list

"""The relaxation's clock, shared by both backends: steps or seconds, and the temperature
anneal over whichever ends first."""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import torch

from featviz.backends.objective import combine


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
    init_scale: float = 3.0  # a reset row restarts from init_scale * one-hot(its best)
    patience: int = 0        # steps without a better hard sample before a row resets (0: never)
    lm_topk: int = 0         # sample each position among the model's top-k next tokens (0: all)
    sparse_k: int = 0        # dense-to-sparse: theta's top-S per position, S down to sparse_k
    simplex: bool = False    # PGD: Adam on distributions projected onto the simplex


@dataclass
class RelaxTrace:
    steps: int
    seconds: float
    soft_act: list        # per logged step, mean over rows
    soft_xe: list
    samples: list = field(default_factory=list)   # per step with exact scores: (ids, act, xe)
    resets: int = 0       # rows reset to their best hard sample after a stall


class HardReadout:
    """The hard side of a straight-through relaxation, step by step.

    With straight-through samples the forward pass of every step runs on one-hot tokens,
    so its activation and xe are the exact scores (in the search's arithmetic) of that
    step's hard sequences: free candidates, one per row and step (GBDA's many hard
    samples, PGD's discrete readout every step).  ``see`` keeps them for the archive and
    each row's best by the row's own score; a row whose best has not improved for
    ``patience`` steps is returned as stalled, to be restarted from its best (PGD's reset)."""

    def __init__(self, lam: torch.Tensor, cap: torch.Tensor, patience: int, trace: RelaxTrace):
        self.lam, self.cap, self.patience, self.trace = lam.cpu(), cap.cpu(), patience, trace
        self.best = torch.full((len(lam),), -torch.inf)
        self.best_ids = None
        self.since = torch.zeros(len(lam), dtype=torch.long)

    def see(self, ids: torch.Tensor, act: torch.Tensor, xe: torch.Tensor | None):
        """One step's hard rows (rows, n) with their activation and xe (None: the objective
        has no fluency term, so the samples are not scored fully and are not kept).
        Returns the rows to reset (a bool tensor) or None."""
        if xe is None:
            return None
        ids, act, xe = ids.detach().cpu(), act.detach().float().cpu(), xe.detach().float().cpu()
        self.trace.samples.append((ids, act, xe))
        score = torch.nan_to_num(combine(act, xe, self.lam, self.cap), nan=-torch.inf)
        better = score > self.best
        self.best = torch.where(better, score, self.best)
        self.best_ids = ids.clone() if self.best_ids is None else \
            torch.where(better[:, None], ids, self.best_ids)
        self.since = torch.where(better, 0, self.since + 1)
        if not self.patience:
            return None
        stalled = (self.since >= self.patience) & torch.isfinite(self.best)
        if not stalled.any():
            return None
        self.since[stalled] = 0
        self.trace.resets += int(stalled.sum())
        return stalled


"""The dreaming objective, as pure functions over a forward pass.

score = target - lambda * xe          (EPO's trade-off, one lambda per batch row)
score = target - mu * relu(xe - cap)  (an epsilon-constraint row: best activation under a cap)

A row whose ``cap`` is finite uses the second form.  Everything here works for soft
inputs (inputs_embeds from a relaxation) and hard inputs (one-hot rows).
"""
from __future__ import annotations

import math

import torch

CAP_PENALTY = 4.0   # mu: activation units per nat above the cap


def combine(act, xe, lam, cap):
    """Per-row score from activation and fluency (xe None means lambda is 0 everywhere).
    The one definition for both backends: torch tensors or JAX arrays (inside jit too)."""
    if xe is None:
        return act
    xp = torch if isinstance(act, torch.Tensor) else _jnp()
    capped = xp.isfinite(cap)
    pen_lam = xp.where(lam > 0, lam * xe, 0.0)                 # 0 * inf -> 0
    pen_cap = CAP_PENALTY * (xe - xp.where(capped, cap, 0.0)).clip(min=0.0)
    return act - xp.where(capped, pen_cap, pen_lam)


def _jnp():
    import jax.numpy as jnp
    return jnp


def weighs_fluency(lam: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
    """Which rows' scores weigh fluency: a lambda above 0 or a finite xe cap."""
    return (lam > 0) | torch.isfinite(cap)


def needs_fluency(lam: torch.Tensor, cap: torch.Tensor) -> bool:
    return bool(weighs_fluency(lam, cap).any())


def lambdas(n: int, lam_min: float = 0.05, lam_max: float = 3.0, include_zero: bool = True):
    """Log-spaced lambdas for a population of n rows (first row 0 when include_zero);
    every one 0 when ``lam_max`` is 0 (the raw mode: activation alone)."""
    if n <= 0:
        return []
    if lam_max == 0:
        return [0.0] * n
    if include_zero and n == 1:
        return [0.0]
    k = n - 1 if include_zero else n
    if k == 1:
        vals = [math.sqrt(lam_min * lam_max)]
    else:
        vals = [lam_min * (lam_max / lam_min) ** (i / (k - 1)) for i in range(k)]
    return ([0.0] if include_zero else []) + vals

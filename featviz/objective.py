"""The dreaming objective, as pure functions over a forward pass.

score = target - lambda * xe          (EPO's trade-off, one lambda per batch row)
score = target - mu * relu(xe - cap)  (an epsilon-constraint row: best activation under a cap)

A row whose ``cap`` is finite uses the second form.  Everything here works for soft
inputs (inputs_embeds from a relaxation) and hard inputs (one-hot rows).
"""
from __future__ import annotations

import math

import torch

from .readout import run, xe_from_logits

CAP_PENALTY = 4.0   # mu: activation units per nat above the cap


def soft_xe(logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Soft cross-entropy of soft tokens ``probs`` (batch, n, V) under the model's
    next-token logits (batch, n, V) predicting them.  Returns (batch,)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(probs * logp).sum(-1).mean(-1)


def combine(act: torch.Tensor, xe: torch.Tensor | None, lam: torch.Tensor,
            cap: torch.Tensor) -> torch.Tensor:
    """Per-row score from activation and fluency (xe None means lambda is 0 everywhere)."""
    if xe is None:
        return act
    capped = torch.isfinite(cap)
    pen_lam = torch.where(lam > 0, lam * xe, torch.zeros_like(xe))   # 0 * inf -> 0
    pen_cap = CAP_PENALTY * torch.relu(xe - torch.where(capped, cap, torch.zeros_like(cap)))
    return act - torch.where(capped, pen_cap, pen_lam)


def needs_fluency(lam: torch.Tensor, cap: torch.Tensor) -> bool:
    return bool((lam > 0).any() or torch.isfinite(cap).any())


def forward_scores(handle, target, embeds: torch.Tensor, probs: torch.Tensor, start: int,
                   lam: torch.Tensor, cap: torch.Tensor):
    """Forward soft or one-hot tokens.  Returns (score, act, xe_soft or None, logits or None).

    ``embeds`` is the full input (BOS + prefix + tokens + suffix); ``probs`` the
    (batch, n, V) distribution of the optimised tokens starting at ``start``.
    """
    fluency = needs_fluency(lam, cap)
    n = probs.shape[1]                      # the logits that predict the soft tokens
    caps, logits = run(handle, target.sites(), inputs_embeds=embeds,
                       need_logits=(start - 1, start - 1 + n) if fluency else False)
    act = target.evaluate(caps, handle, (start, start + n))
    xe = soft_xe(logits, probs) if fluency else None
    return combine(act, xe, lam, cap), act, xe, logits


def lambdas(n: int, lam_min: float = 0.05, lam_max: float = 3.0, include_zero: bool = True):
    """Log-spaced lambdas for a population of n rows (first row 0 when include_zero)."""
    if n <= 0:
        return []
    if include_zero and n == 1:
        return [0.0]
    k = n - 1 if include_zero else n
    if k == 1:
        vals = [math.sqrt(lam_min * lam_max)]
    else:
        vals = [lam_min * (lam_max / lam_min) ** (i / (k - 1)) for i in range(k)]
    return ([0.0] if include_zero else []) + vals


def exact_scores(handle, target, ids_full: torch.Tensor, start: int, n: int):
    """Exact activation and xe of hard sequences (no grad).  ids_full includes BOS."""
    with torch.no_grad():
        caps, logits = run(handle, target.sites(), input_ids=ids_full, need_logits=True)
        act = target.evaluate(caps, handle, (start, start + n))
        xe = xe_from_logits(logits[:, :start + n], ids_full[:, :start + n], start)
    return act, xe

"""The continuous relaxation: Gumbel-softmax over learnable per-position logits.

Pure pieces (temperature schedule, Gumbel-softmax sample, model-sampled init) plus
``relax``, the loop that runs Adam on the logits for a number of steps or seconds.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .objective import forward_scores


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


def gumbel_softmax(logits: torch.Tensor, tau: float, generator: torch.Generator,
                   hard: bool = False) -> torch.Tensor:
    """A relaxed one-hot sample; ``hard`` gives straight-through one-hot samples."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(1e-10, 1.0)
    g = -torch.log(-torch.log(u))
    y = torch.softmax((logits + g) / tau, dim=-1)
    if hard:
        idx = y.argmax(-1, keepdim=True)
        y_hard = torch.zeros_like(y).scatter_(-1, idx, 1.0)
        y = y_hard + y - y.detach()
    return y


def sample_from_model(handle, batch: int, n: int, mask: torch.Tensor,
                      generator: torch.Generator, prefix_ids: list[int] = (),
                      temperature_: float = 1.0) -> torch.Tensor:
    """Ancestral samples of n readable tokens after BOS + prefix: where the model itself goes."""
    ids = torch.tensor([[handle.bos_id, *prefix_ids]] * batch, device=handle.device)
    bias = torch.where(mask, 0.0, float("-inf"))
    from .beam import _cache_kw
    name = _cache_kw(handle.model)   # "cache" on transformers >= 5.2x, else "past_key_values"
    past, step_ids = None, ids
    with torch.no_grad():
        for _ in range(n):
            out = handle.model(input_ids=step_ids, use_cache=True, **{name: past})
            past = out[name]
            p = torch.softmax(out.logits[:, -1].float() / temperature_ + bias, -1)
            step_ids = torch.multinomial(p, 1, generator=generator)
            ids = torch.cat([ids, step_ids], 1)
    return ids[:, 1 + len(prefix_ids):]


@dataclass
class RelaxTrace:
    steps: int
    seconds: float
    soft_act: list        # per logged step, mean over rows
    soft_xe: list


def relax(handle, target, theta: torch.Tensor, mask: torch.Tensor, lam: torch.Tensor,
          cap: torch.Tensor, *, steps: int, seconds: float | None, lr: float, tau0: float,
          tau1: float, hard: bool, generator: torch.Generator, make_embeds,
          start: int, on_step=None) -> RelaxTrace:
    """Adam on theta (batch, n, V) maximising target - lambda * xe_soft."""
    theta.requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    bias = torch.where(mask, 0.0, -1e9)
    W = handle.embedding
    t0 = time.perf_counter()
    trace = RelaxTrace(0, 0.0, [], [])
    for step, tau in schedule(steps, seconds, tau0, tau1):
        y = gumbel_softmax(theta + bias, tau, generator, hard=hard)
        score, act, xe, _ = forward_scores(handle, target, make_embeds(y @ W), y, start, lam, cap)
        opt.zero_grad(set_to_none=True)
        (-score.sum()).backward()
        opt.step()
        trace.steps = step + 1
        if step % 10 == 0:
            trace.soft_act.append(float(act.detach().mean()))
            trace.soft_xe.append(float(xe.detach().mean()) if xe is not None else math.nan)
        if on_step is not None:
            on_step(step, theta)
    theta.requires_grad_(False)
    trace.seconds = time.perf_counter() - t0
    return trace

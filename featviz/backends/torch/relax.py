"""The continuous relaxation: Gumbel-softmax over learnable per-position logits.

Pure pieces (temperature schedule, Gumbel-softmax sample, model-sampled init) plus
``relax``, the loop that runs Adam on the logits for a number of steps or seconds.
"""
from __future__ import annotations

import math
import time

import torch

from featviz.backends.objective import weighs_fluency
from featviz.backends.schedule import HardReadout, RelaxSettings, RelaxTrace, schedule
from featviz.backends.torch.score import forward_scores
from featviz.model.precision import product_embedding


def gumbel_softmax(logits: torch.Tensor, tau: float, generator, hard: bool = False) -> torch.Tensor:
    """A relaxed one-hot sample; ``hard`` gives straight-through one-hot samples.
    ``generator``: one torch.Generator, or a list of them that split the rows into equal
    blocks, each block's noise drawn from its own (several targets in one batch, each
    with the noise it would get alone)."""
    gens = generator if isinstance(generator, (list, tuple)) else [generator]
    block = logits.shape[0] // len(gens)
    u = torch.cat([torch.rand((block,) + logits.shape[1:], generator=g, device=logits.device)
                   for g in gens]).clamp_(1e-10, 1.0)
    g = -torch.log(-torch.log(u))
    y = torch.softmax((logits + g) / tau, dim=-1)
    if hard:
        idx = y.argmax(-1, keepdim=True)
        y_hard = torch.zeros_like(y).scatter_(-1, idx, 1.0)
        y = y_hard + y - y.detach()
    return y


def relax(handle, target, theta: torch.Tensor, mask: torch.Tensor, lam: torch.Tensor,
          cap: torch.Tensor, *, steps: int, seconds: float | None, lr: float, tau0: float,
          tau1: float, hard: bool, generator: torch.Generator, make_embeds,
          start: int, on_step=None, patience: int = 0, init_scale: float = 3.0,
          lm_topk: int = 0, sparse_k: int = 0, simplex: bool = False) -> RelaxTrace:
    """Adam on theta (batch, n, V) maximising target - lambda * xe_soft.  With
    straight-through samples (``hard``) every step's hard rows and their exact scores go
    to the trace (``HardReadout``), and a row that has not found a better one for
    ``patience`` steps restarts from ``init_scale`` * one-hot(its best), its Adam moments
    cleared.  ``lm_topk``: a row that weighs fluency samples each position only among the
    model's top-k next tokens there at the step before, and theta's argmax
    (``lm_support``).  ``sparse_k``: ADC's dense-to-sparse support, each position sampled
    only among theta's top-S tokens, S shrinking from the whole vocabulary to ``sparse_k``
    as the temperature anneals (``sparse_size``).  ``simplex``: PGD's parameterization
    instead of logits: each position a distribution p on the simplex, started at
    one-hot(theta's argmax); Adam steps on p, each followed by the Euclidean projection
    back onto the simplex (``project_simplex``: most tokens at exactly 0), the hard rows
    drawn from p itself (Gumbel-max) with the straight-through gradient to p; theta
    comes back as log p (the temperature and ``sparse_k`` play no part there)."""
    if simplex:
        return _relax_simplex(handle, target, theta, mask, lam, cap, steps=steps,
                              seconds=seconds, lr=lr, hard=hard, generator=generator,
                              make_embeds=make_embeds, start=start, on_step=on_step,
                              patience=patience)
    theta.requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    bias = torch.where(mask, 0.0, -1e9)
    W = product_embedding(handle)
    t0 = time.perf_counter()
    trace = RelaxTrace(0, 0.0, [], [])
    readout = HardReadout(lam, cap, patience, trace) if hard else None
    support = bias
    n_vocab = int(mask.sum())
    for step, tau in schedule(steps, seconds, tau0, tau1):
        dense = theta + support
        if sparse_k:
            dense = dense + top_support(dense.detach(),
                                        sparse_size(tau, tau0, tau1, sparse_k, n_vocab))
        y = gumbel_softmax(dense, tau, generator, hard=hard)
        score, act, xe, logits = forward_scores(handle, target, make_embeds(y @ W), y, start,
                                                lam, cap)
        opt.zero_grad(set_to_none=True)
        (-score.sum()).backward()
        opt.step()
        end_step(step, y.detach().argmax(-1), act, xe, theta, opt, readout, init_scale, trace,
                 on_step)
        if lm_topk and logits is not None:     # the next step's support, around theta now
            support = lm_support(logits.detach(), theta.detach(), mask, lm_topk,
                                 weighs_fluency(lam, cap))
    theta.requires_grad_(False)
    trace.seconds = time.perf_counter() - t0
    return trace


def lm_support(logits: torch.Tensor, theta: torch.Tensor, mask: torch.Tensor, k: int,
               rows: torch.Tensor) -> torch.Tensor:
    """The additive mask (0 allowed, -1e9 not) of COLD-Attack's top-k constraint: at each
    position of ``rows`` the model's top-``k`` next tokens (``logits`` (batch, n, V), the
    ones predicting each position) and theta's argmax, within the vocabulary ``mask``;
    other rows keep the whole vocabulary."""
    keep = torch.zeros(theta.shape, dtype=torch.bool, device=theta.device)
    keep.scatter_(-1, logits.topk(min(k, logits.shape[-1]), -1).indices, True)
    keep.scatter_(-1, (theta + torch.where(mask, 0.0, -1e9)).argmax(-1, keepdim=True), True)
    keep |= ~rows.to(theta.device)[:, None, None]
    return torch.where(keep & mask, 0.0, -1e9)


def end_step(step: int, ids, act, xe, param: torch.Tensor, opt, readout, scale: float,
             trace: RelaxTrace, on_step) -> None:
    """A relaxation step's bookkeeping after its update, for either parameterization:
    the hard rows ``ids`` to the readout (stalled rows of ``param`` restart from
    ``scale`` * one-hot(their best)), the trace, the caller's ``on_step``."""
    if readout is not None:
        stalled = readout.see(ids, act, xe)
        if stalled is not None:
            reset_rows(param, opt.state[param], stalled.to(param.device),
                       readout.best_ids.to(param.device), scale)
    trace.steps = step + 1
    if step % 10 == 0:
        trace.soft_act.append(float(act.detach().mean()))
        trace.soft_xe.append(float(xe.detach().mean()) if xe is not None else math.nan)
    if on_step is not None:
        on_step(step, param)


def _relax_simplex(handle, target, theta, mask, lam, cap, *, steps, seconds, lr, hard,
                   generator, make_embeds, start, on_step, patience) -> RelaxTrace:
    """``relax`` with ``simplex``: Adam on p, projected onto the simplex after each step."""
    bias = torch.where(mask, 0.0, -1e9)
    p = torch.zeros_like(theta).scatter_(-1, (theta + bias).argmax(-1, keepdim=True), 1.0)
    p.requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr)
    W = product_embedding(handle)
    t0 = time.perf_counter()
    trace = RelaxTrace(0, 0.0, [], [])
    readout = HardReadout(lam, cap, patience, trace) if hard else None
    for step, _tau in schedule(steps, seconds, 1.0, 1.0):
        logp = log_support(p.detach()) + bias
        idx = gumbel_softmax(logp, 1.0, generator).argmax(-1, keepdim=True)   # ~ Categorical(p)
        y = torch.zeros_like(logp).scatter_(-1, idx, 1.0) + p - p.detach()
        score, act, xe, _ = forward_scores(handle, target, make_embeds(y @ W), y, start, lam, cap)
        opt.zero_grad(set_to_none=True)
        (-score.sum()).backward()
        opt.step()
        with torch.no_grad():
            p.copy_(project_simplex(p, mask))
        end_step(step, idx[..., 0], act, xe, p, opt, readout, 1.0, trace, on_step)
    with torch.no_grad():
        theta.copy_(log_support(p))
    trace.seconds = time.perf_counter() - t0
    return trace


def log_support(p: torch.Tensor) -> torch.Tensor:
    """log p, with -1e9 where p is 0 (the tokens the projection left out)."""
    return torch.where(p > 0, torch.log(p.clamp_min(1e-30)), -1e9)


def project_simplex(v: torch.Tensor, mask: torch.Tensor, k: int = 2048) -> torch.Tensor:
    """The Euclidean projection of each row of ``v`` (..., V) onto the probability simplex
    over the tokens of ``mask`` (others 0): max(v - t, 0) with the t that makes it sum to
    1 (Duchi et al. 2008).  t is the largest (sum of the j largest - 1) / j over j, so the
    ``k`` largest entries give a lower bound on it; when the k-th lies at or below that
    bound, no entry outside them can stay positive and they give t exactly (else every
    entry of those positions is sorted)."""
    v = torch.where(mask, v.float(), -1e9)
    flat = v.reshape(-1, v.shape[-1])
    t = _simplex_threshold(flat.topk(min(k, flat.shape[-1]), -1).values)
    wide = t.isnan()
    if wide.any():
        t[wide] = _simplex_threshold(flat[wide].sort(-1, descending=True).values)
    return (v - t.reshape(v.shape[:-1] + (1,))).clamp_min(0.0)


def _simplex_threshold(u: torch.Tensor) -> torch.Tensor:
    """Each row's projection threshold from its largest entries ``u`` (rows, k), sorted
    descending; NaN where the k-th entry lies above the lower bound they give (the row
    may have more than k positive entries)."""
    j = torch.arange(1, u.shape[-1] + 1, device=u.device, dtype=u.dtype)
    css = u.cumsum(-1)
    rho = (u - (css - 1) / j > 0).sum(-1, keepdim=True)       # a prefix: its length
    t = ((css.gather(-1, rho - 1) - 1) / rho)[:, 0]
    exact = u[:, -1] <= ((css - 1) / j).amax(-1)
    return torch.where(exact, t, torch.nan)


def sparse_size(tau: float, tau0: float, tau1: float, k: int, n_vocab: int) -> int:
    """The support's size at temperature ``tau``: the whole vocabulary at ``tau0``,
    ``k`` at ``tau1``, geometric in between (as the temperature itself)."""
    if tau0 == tau1 or k >= n_vocab:
        return min(k, n_vocab)
    g = min(max(math.log(tau / tau1) / math.log(tau0 / tau1), 0.0), 1.0)
    return max(k, min(n_vocab, round(k * (n_vocab / k) ** g)))


def top_support(logits: torch.Tensor, s: int) -> torch.Tensor:
    """The additive mask (0 kept, -1e9 not) of each position's top-``s`` logits (ties at
    the s-th kept too)."""
    kth = logits.topk(s, -1).values[..., -1:]
    return torch.where(logits >= kth, 0.0, -1e9)


def reset_rows(theta: torch.Tensor, adam: dict, rows: torch.Tensor, best: torch.Tensor,
               scale: float) -> None:
    """Restart ``rows`` of theta from ``scale`` * one-hot(their ``best`` ids), with their
    Adam moments cleared (the step count is shared and stays)."""
    with torch.no_grad():
        fresh = torch.zeros_like(theta[rows]).scatter_(-1, best[rows][..., None], scale)
        theta[rows] = fresh
        for name in ("exp_avg", "exp_avg_sq"):
            if name in adam:
                adam[name][rows] = 0.0


class TorchRelaxer:
    """The Relaxer interface on torch (see ``backends.choose.relaxer``): Adam on theta
    (rows, n, V), the soft tokens fed as ``inputs_embeds`` between BOS + prefix and the
    suffix of ``tokens``."""

    def __init__(self, handle, target, mask, tokens, settings: RelaxSettings, generator,
                 arithmetic):
        self.handle, self.target, self.mask, self.tokens = handle, target, mask, tokens
        self.settings, self.generator, self.arithmetic = settings, generator, arithmetic

    def __call__(self, theta, lam, cap, *, seconds, restart: int, on_step):
        h, tokens, st = self.handle, self.tokens, self.settings
        rows, n = theta.shape[:2]

        def embeds(soft_emb):
            full = tokens.full(torch.zeros(rows, n, dtype=torch.long, device=h.device))
            e = h.model.get_input_embeddings()(full)
            s = tokens.start
            return torch.cat([e[:, :s], soft_emb, e[:, s + n:]], 1)

        with self.arithmetic:
            trace = relax(h, self.target, theta, self.mask, lam, cap, steps=st.steps,
                          seconds=seconds, lr=st.lr, tau0=st.tau0, tau1=st.tau1, hard=st.hard,
                          generator=self.generator, make_embeds=embeds, start=tokens.start,
                          on_step=on_step, patience=st.patience, init_scale=st.init_scale,
                          lm_topk=st.lm_topk, sparse_k=st.sparse_k, simplex=st.simplex)
        return theta, trace

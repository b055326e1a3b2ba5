"""EPO baseline (Thompson et al. 2024, "Fluent dreaming for language models").

A population of prompts, one lambda each (log-spaced), objective activation -
lambda * xe.  Each iteration: gradient of each member's objective w.r.t. its one-hot
tokens, top-k tokens per position, children by random single-token swaps from those
top-k sets, exact scoring of every child, then per-lambda selection of the best
member of the whole pool (parents and children).  GCG is EPO with one member and
lambda = 0.  Candidates are kept only if they survive decode/re-encode, as for featviz.
Built on featviz.discretize's primitives (one-hot gradients, swaps, exact scoring).
"""
from __future__ import annotations

import time

import torch

from featviz.backends.objective import lambdas
from featviz.backends.torch.score import evaluate, onehot_grads
from featviz.model.tokens import Tokens
from featviz.model.vocab import readable_mask
from featviz.search.archive import Archive
from featviz.search.moves import propose
from featviz.search.population import scores_for_rows, stable_unique


def run_epo(handle, target, *, seconds: float, length: int = 12, population: int = 4,
            children: int = 16, top_k: int = 256, lam=None, seed: int = 0,
            max_iters: int | None = None) -> tuple[Archive, dict]:
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    mask = readable_mask(handle)
    tokens = Tokens(handle, [], [])
    lam = torch.tensor(lam if lam is not None else lambdas(population, 0.1, 3.0))
    cap = torch.full_like(lam, float("inf"))
    allowed = mask.nonzero().flatten()
    archive = Archive()
    pop = None
    while pop is None or len(pop) < len(lam):   # random readable, round-trip-stable init
        cand = allowed[torch.randint(0, len(allowed), (len(lam), length), generator=gen)]
        cand = stable_unique(tokens, cand)
        pop = cand if pop is None else torch.cat([pop, cand])
    pop = pop[: len(lam)]
    pa, px, _ = evaluate(tokens, target, pop)
    archive.add(pop, pa, px)
    it = 0
    while time.perf_counter() - t0 < seconds and (max_iters is None or it < max_iters):
        grad, lm = onehot_grads(tokens, target, pop, lam, cap)
        kids = propose(pop, grad, lm, mask, children, top_k, 1, 0.0, gen)
        kids = stable_unique(tokens, kids, archive)
        if len(kids):
            ka, kx, _ = evaluate(tokens, target, kids)
            archive.add(kids, ka, kx)
            pool, pool_a, pool_x = torch.cat([pop, kids]), torch.cat([pa, ka]), torch.cat([px, kx])
            best = scores_for_rows(torch.nan_to_num(pool_a, nan=-1e30), pool_x, lam, cap).argmax(1)
            pop, pa, px = pool[best], pool_a[best], pool_x[best]
        it += 1
    return archive, {"iters": it, "seconds": time.perf_counter() - t0,
                     "evaluated": archive.evaluated}


def run_gcg(handle, target, *, seconds: float, length: int = 12, candidates: int = 64,
            top_k: int = 256, seed: int = 0, max_iters: int | None = None):
    """GCG as EPO with one member and lambda = 0 (64 single-swap candidates a step)."""
    return run_epo(handle, target, seconds=seconds, length=length, population=1,
                   children=candidates, top_k=top_k, lam=[0.0], seed=seed, max_iters=max_iters)

"""EPO and GCG baselines, with featviz's engineering.

EPO (Thompson et al. 2024, "Fluent dreaming for language models"; reference code
Confirm-Solutions/dreamy, ``epo``): a population of prompts, one lambda each (log-spaced
over [0.1, 10] as in the reference), objective activation - lambda * xe.  Each iteration:
gradient of each member's objective w.r.t. its one-hot tokens, top-k tokens per position,
children by random single-token swaps from those top-k sets, exact scoring of every child,
then per-lambda selection of the best member of the whole pool (parents and children).
GCG (Zou et al. 2023) is EPO with one member and lambda = 0.

The same engineering as featviz's search:
- the search's arithmetic is bf16 where the device has fast bfloat16 (``precision``,
  resolved as featviz resolves it), and every reported number is recomputed in float32
  on the re-encoded text by the benchmark (``verify_one``);
- with lambda = 0 everywhere (GCG) no fluency is needed: gradients and children's scores
  come from a forward that stops after the target's layer (no LM head); the xe of the
  strongest ``xe_top`` candidates is computed once at the end, so the archive can report
  them against the xe caps;
- candidates are kept only if they survive decode / re-encode, as for featviz.

The reference code's restart rule, with its two quirks fixed: every ``restart_every``
iterations every member is replaced by the pool's best under a restart penalty
lambda_r = ``restart_lam`` x U(1/m, m) with m = ``restart_mult``.  The reference restarts
at iteration 0 too (``i % restart_frequency == 0``), before any search, and draws that
random lambda_r, prints it, then selects with ``restart_xentropy`` instead; here there is
no restart at iteration 0 and the drawn lambda_r is the one used (recorded in the stats).
"""
from __future__ import annotations

import math
import time

import torch

from featviz.backends.choose import resolve_precision
from featviz.backends.torch.score import evaluate, onehot_grads
from featviz.model.precision import SearchArithmetic
from featviz.model.tokens import Tokens
from featviz.model.vocab import readable_mask
from featviz.search.archive import Archive
from featviz.search.moves import propose
from featviz.search.population import scores_for_rows, stable_unique

REFERENCE_LAMS = (0.1, 10.0)     # dreamy's x_penalty_min, x_penalty_max


def log_lambdas(n: int, lo: float, hi: float) -> list[float]:
    """n lambdas log-spaced over [lo, hi] (the reference's exp(linspace(log lo, log hi, n)))."""
    if n == 1:
        return [math.sqrt(lo * hi)]
    return [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]


def run_epo(handle, target, *, seconds: float, length: int = 12, population: int = 8,
            children: int = 32, top_k: int = 512, lam=None, lam_range=REFERENCE_LAMS,
            restart_every: int = 50, restart_lam: float = 2.0, restart_mult: float = 3.0,
            precision: str = "auto", xe_top: int = 32, seed: int = 0,
            max_iters: int | None = None) -> tuple[Archive, dict]:
    """EPO for ``seconds`` (or ``max_iters`` iterations).  ``lam``: the members' lambdas
    (default: ``population`` of them log-spaced over ``lam_range``).  Returns the archive
    of every scored, round-trip-stable candidate and the run's stats."""
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    mask = readable_mask(handle)
    tokens = Tokens(handle, [], [])
    lam = torch.tensor(lam if lam is not None else log_lambdas(population, *lam_range))
    cap = torch.full_like(lam, math.inf)
    fluency = bool((lam > 0).any())
    prec = resolve_precision(handle, precision)
    autocast = SearchArithmetic(handle, prec == "bf16")   # as featviz: bf16 weight copies
    allowed = mask.nonzero().flatten()
    archive = Archive()

    def score(ids):
        """(activation, xe) in the search's arithmetic; xe is +inf (not computed) without
        fluency, where the forward stops after the target's layer."""
        with autocast:
            a, x, _ = evaluate(tokens, target, ids, with_xe=fluency)
        a = a.float()
        return a, (x.float() if fluency else torch.full_like(a, math.inf))

    pop = None
    while pop is None or len(pop) < len(lam):   # random readable, round-trip-stable init
        cand = allowed[torch.randint(0, len(allowed), (len(lam), length), generator=gen)]
        cand = stable_unique(tokens, cand)
        pop = cand if pop is None else torch.cat([pop, cand])
    pop = pop[: len(lam)]
    pa, px = score(pop)
    archive.add(pop, pa, px)
    restarts = []
    it = 0
    while time.perf_counter() - t0 < seconds and (max_iters is None or it < max_iters):
        with autocast:
            grad, lm = onehot_grads(tokens, target, pop, lam, cap, with_lm=fluency)
        grad = grad.float()
        lm = lm.float() if fluency else torch.zeros_like(grad)   # unused: no LM swaps
        kids = propose(pop, grad, lm, mask, children, top_k, 1, 0.0, gen)
        kids = stable_unique(tokens, kids, archive)
        if len(kids):
            ka, kx = score(kids)
            archive.add(kids, ka, kx)
            pool, pool_a, pool_x = torch.cat([pop, kids]), torch.cat([pa, ka]), torch.cat([px, kx])
            pool_a = torch.nan_to_num(pool_a, nan=-1e30)
            it += 1
            if restart_every and it % restart_every == 0 and fluency:
                m = restart_mult
                lam_r = restart_lam * (1 / m + (m - 1 / m) * float(torch.rand(1, generator=gen)))
                best = (pool_a - lam_r * pool_x).argmax().repeat(len(lam))
                restarts.append((it, round(lam_r, 4)))
            else:
                best = scores_for_rows(pool_a, pool_x, lam, cap).argmax(1)
            pop, pa, px = pool[best], pool_a[best], pool_x[best]
        else:
            it += 1
    if not fluency:                   # the xe of the strongest candidates, once, for the caps
        keys = sorted(archive.entries, key=lambda k: -archive.entries[k][0])[:xe_top]
        if keys:
            ids = torch.tensor(keys, device=handle.device)
            with autocast:
                a, x, _ = evaluate(tokens, target, ids)
            for k, ai, xi in zip(keys, a.float().tolist(), x.float().tolist()):
                archive.entries[k] = (ai, xi)
    return archive, {"iters": it, "seconds": time.perf_counter() - t0,
                     "evaluated": archive.evaluated, "precision": prec, "restarts": restarts,
                     "lambdas": [round(v, 4) for v in lam.tolist()]}


def run_gcg(handle, target, *, seconds: float, length: int = 12, candidates: int = 128,
            top_k: int = 256, seed: int = 0, precision: str = "auto",
            max_iters: int | None = None):
    """GCG: EPO with one member and lambda = 0 (``candidates`` single-swap children a step;
    the forward stops after the target's layer)."""
    return run_epo(handle, target, seconds=seconds, length=length, population=1,
                   children=candidates, top_k=top_k, lam=[0.0], seed=seed, precision=precision,
                   max_iters=max_iters)


def sweep_grid() -> dict:
    """The configurations each baseline is tuned over for the 90 s CPU budget (picked on
    the dev set's median fluent ratio): name -> keyword arguments."""
    grid = {}
    for p in (4, 8):
        for c in (16, 32):
            for k in (256, 512):
                for lname, lr in (("ref", REFERENCE_LAMS), ("narrow", (0.1, 3.0))):
                    grid[f"epo-p{p}-c{c}-k{k}-{lname}"] = (run_epo, dict(
                        population=p, children=c, top_k=k, lam_range=lr))
    for c in (64, 128, 256):
        for k in (256, 512):
            grid[f"gcg-c{c}-k{k}"] = (run_gcg, dict(candidates=c, top_k=k))
    return grid

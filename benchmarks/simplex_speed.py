"""What a relaxation step costs by parameterization: logits (Gumbel-softmax) vs PGD's
simplex, on both backends, through the search's own loop; and the simplex projection alone.

A step's cost is measured as the difference of two ``dream`` runs with the same config and
seed but ``steps`` S0 and S0 + S (``swap_iters`` 0, one restart), divided by S: the init,
the discretization's scoring and, on JAX, the compile cancel out (a warm-up run compiles
first).  The config is the search's own (batch 8, length 12, bf16, every row's lambda and
cap), with ``lr`` 0.1 for the simplex as in ``dream_quality.py``'s simplex methods.  All
torch rows run before JAX starts its thread pool.  The projection alone is timed on a
(8, 12, V) input shaped like one Adam step from a point on the simplex: one-hot rows plus
+-lr on every readable token (Adam's first steps move each entry by about lr).

Run: python benchmarks/simplex_speed.py [--steps 40] [--repeats 2]
Writes benchmarks/results/simplex_speed.md
"""
import argparse
import os
import platform
import time

import numpy as np
import torch
from _results import write_result

import featviz
from featviz import DreamConfig, dream
from featviz.backends.torch.relax import project_simplex as project_torch
from featviz.model.vocab import readable_mask

TARGETS = ("mlp:6:308", "mlp:24:1097")
LR = 0.1


def relax_seconds(h, spec, backend, simplex, steps):
    cfg = DreamConfig(steps=steps, swap_iters=0, restarts=1, seed=0, backend=backend,
                      simplex=simplex, **({"lr": LR} if simplex else {}))
    res = dream(h, featviz.parse_target(spec, h), cfg, progress=False)
    assert res.stats["relax_steps"] == steps, res.stats["relax_steps"]
    return res.stats["seconds"]["relax"]


def step_cost(h, spec, backend, simplex, s0, s, repeats):
    """Seconds per relaxation step: median over repeats of (t(s0 + s) - t(s0)) / s."""
    relax_seconds(h, spec, backend, simplex, 2)           # warm-up (JAX: compile)
    out = []
    for _ in range(repeats):
        short = relax_seconds(h, spec, backend, simplex, s0)
        long = relax_seconds(h, spec, backend, simplex, s0 + s)
        out.append((long - short) / s)
    return float(np.median(out)), float(min(out)), float(max(out))


def projection_input(h, seed=0):
    mask = readable_mask(h)
    g = torch.Generator().manual_seed(seed)
    B, n, V = 8, 12, h.vocab_size
    readable = mask.nonzero()[:, 0]
    hot = readable[torch.randint(len(readable), (B, n), generator=g)]
    p = torch.zeros(B, n, V).scatter_(-1, hot[..., None], 1.0)
    sign = torch.randint(0, 2, (B, n, V), generator=g).float() * 2 - 1
    return p + LR * sign * mask, mask


def time_it(fn, repeats):
    fn()                                                  # warm-up (JAX: compile)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def michelot_iterations(v, mask):
    """How many fixed-point updates the JAX projection makes on ``v`` (numpy, as it does)."""
    v = np.where(mask, v.astype(np.float32), -np.inf)
    t = v.max(-1, keepdims=True) - 1
    for i in range(1, 101):
        above = v > t
        new = (np.where(above, v, 0.0).sum(-1, keepdims=True) - 1) / above.sum(-1, keepdims=True)
        if not (new > t).any():
            return i
        t = new
    return 100


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40, help="S: the steps whose cost is timed")
    ap.add_argument("--base", type=int, default=5, help="S0: the shorter run's steps")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    h = featviz.load_model()
    configs = [(spec, backend, simplex) for backend in ("torch", "jax") for spec in TARGETS
               for simplex in (False, True)]
    v, mask = projection_input(h)
    proj_torch = time_it(lambda: project_torch(v, mask), 5)
    cost = {}
    for c in configs:                 # torch first: JAX's threads would share the cores
        cost[c] = step_cost(h, *c, args.base, args.steps, args.repeats)
        print(c, f"{cost[c][0] * 1e3:.0f} ms/step", flush=True)
    import jax
    import jax.numpy as jnp

    from featviz.backends.jax.relax import project_simplex as project_jax
    bias = jnp.asarray(np.where(mask.numpy(), 0.0, -1e9).astype(np.float32))
    vj = jnp.asarray(v.numpy())
    pj = jax.jit(project_jax)
    proj_jax = time_it(lambda: pj(vj, bias).block_until_ready(), 5)
    iters = michelot_iterations(v.numpy(), mask.numpy())
    lines = ["# Relaxation step cost: logits vs PGD's simplex, torch and JAX", "",
             f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"jax {jax.__version__}, model {h.name}; the search's config (batch 8, length 12, "
             f"precision auto); a step's cost = (t({args.base} + {args.steps} steps) - "
             f"t({args.base} steps)) / {args.steps} of the search's relaxation stage, median "
             f"(min-max) over {args.repeats} repeats after a warm-up run; simplex with lr {LR}.",
             "", "| target | backend | logits (ms/step) | simplex (ms/step) | simplex / logits |",
             "|---|---|---:|---:|---:|"]
    for spec in TARGETS:
        for backend in ("torch", "jax"):
            lo, si = cost[(spec, backend, False)], cost[(spec, backend, True)]
            lines.append(f"| {spec} | {backend} | {lo[0] * 1e3:.0f} ({lo[1] * 1e3:.0f}-"
                         f"{lo[2] * 1e3:.0f}) | {si[0] * 1e3:.0f} ({si[1] * 1e3:.0f}-"
                         f"{si[2] * 1e3:.0f}) | {si[0] / lo[0]:.2f}x |")
    lines += ["", "The projection alone on a (8, 12, "
              f"{h.vocab_size}) input (one-hot rows ±{LR} on every readable token), median "
              "of 5 after a warm-up:", "",
              f"- torch (top-2048, then a sort where that is not exact): "
              f"{proj_torch * 1e3:.1f} ms",
              f"- JAX (jitted Michelot fixed point, {iters} iterations on this input): "
              f"{proj_jax * 1e3:.1f} ms"]
    write_result("simplex_speed.md", lines)


if __name__ == "__main__":
    main()

"""Batching across targets: what sharing one relaxation batch buys, per target.

Part 1, step throughput: K neurons of one layer (mlp:L:0..K-1) get 8 rows each with
dream's population (3 xe-cap rows + lambda 0..1, so the fluency term is on) in one
K*8-row batch (``PerRow``).  One step = Gumbel sample + forward + backward + Adam.
torch eager (bf16 autocast, as dream runs it) and JAX (jit, fp32).  Reported: steps/s
of the batch, target-steps/s (K x steps/s) and the gain over K = 1.
Part 2, end to end: G targets through ``dream_many`` against G ``dream`` calls one after
another, fixed step counts (so both do the same work), torch backend.

Run: python benchmarks/batch_targets.py [--device cuda] [--arch DIR] [--groups 1,4,16]
     (--arch DIR: the embedded architecture with random weights, see _arch.py)
Writes benchmarks/results/batch_targets_<device>.md
"""
import argparse
import os
import platform
import time

import torch
from _arch import model_for
from _results import write_result
from backend_speed import jax_steps, torch_steps

from featviz.search.api import dream, dream_many
from featviz.search.config import DreamConfig
from featviz.search.population import row_params
from featviz.targets.core import PerRow
from featviz.targets.spec import parse_target


def device_name(dev: str) -> str:
    if dev == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{platform.machine()} CPU, {os.cpu_count()} cores"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", help="folder from _arch.save_arch: random weights, same network")
    ap.add_argument("--layer", type=int, default=6)
    ap.add_argument("--groups", default="1,2,4")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--e2e", type=int, default=4, help="targets in the end-to-end comparison")
    ap.add_argument("--e2e-steps", dest="e2e_steps", type=int, default=30)
    ap.add_argument("--e2e-swaps", dest="e2e_swaps", type=int, default=5)
    ap.add_argument("--no-jax", dest="no_jax", action="store_true")
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    h = model_for(args)
    cpu_h = h if args.device == "cpu" else None
    lam8, cap8 = row_params(DreamConfig(), torch.device("cpu"))
    rows, base = [], {}
    for K in [int(x) for x in args.groups.split(",")]:
        ts = tuple(parse_target(f"mlp:{args.layer}:{i}", h) for i in range(K))
        t = ts[0] if K == 1 else PerRow(ts, tuple(i for i in range(K) for _ in range(8)))
        lam, cap = lam8.repeat(K), cap8.repeat(K)
        tt = torch_steps(h, t, 8 * K, 12, lam, args.steps, "bf16", cap=cap)
        tj = None
        if not args.no_jax:
            if cpu_h is None and args.arch:
                from _arch import load_arch
                cpu_h = load_arch(args.arch, "cpu")
            elif cpu_h is None:
                import featviz
                cpu_h = featviz.load_model()
            tj, _ = jax_steps(cpu_h, t, 8 * K, 12, lam, args.steps, cap=cap)
        base.setdefault("torch", tt)
        if tj is not None:
            base.setdefault("jax", tj)
        r = (K, 8 * K, 1 / tt, K / tt, base["torch"] / (tt / K),
             None if tj is None else 1 / tj, None if tj is None else K / tj,
             None if tj is None else base["jax"] / (tj / K))
        rows.append(r)
        print(f"K={K}: torch {r[2]:.2f} steps/s = {r[3]:.1f} target-steps/s ({r[4]:.2f}x)"
              + ("" if tj is None else f"; jax {r[5]:.2f} steps/s = {r[6]:.1f} target-steps/s "
                 f"({r[7]:.2f}x)"), flush=True)

    fmt = lambda x, f: "—" if x is None else f.format(x)  # noqa: E731
    lines = ["# Batching across targets", "",
             f"{device_name(args.device)}; torch {torch.__version__}; model {h.name}; "
             f"targets mlp:{args.layer}:0..K-1, 8 rows per target (dream's population: 3 "
             "xe-cap rows + lambda 0..1, fluency term on), length 12; median of "
             f"{args.steps} steps after a warm-up step.  torch: eager, bf16 autocast; JAX: "
             "jit, fp32.", "",
             "| targets K | rows | torch steps/s | torch target-steps/s | torch gain vs K=1 "
             "| JAX steps/s | JAX target-steps/s | JAX gain vs K=1 |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {K} | {R} | {a:.2f} | {b:.1f} | {c:.2f}x | {fmt(d, '{:.2f}')} | "
              f"{fmt(e, '{:.1f}')} | {fmt(f, '{:.2f}x')} |" for K, R, a, b, c, d, e, f in rows]
    write_result(f"batch_targets_{args.device}.md", lines)     # part 1 stands on its own
    if args.e2e < 1:
        return
    cfg = DreamConfig(steps=args.e2e_steps, swap_iters=args.e2e_swaps, seed=0)
    specs = [f"mlp:{args.layer}:{i}" for i in range(args.e2e)]
    dream(h, specs[0], DreamConfig(steps=2, swap_iters=1), progress=False)        # warm-up
    t0 = time.perf_counter()
    solo = [dream(h, s, cfg, progress=False) for s in specs]
    t_solo = time.perf_counter() - t0
    t0 = time.perf_counter()
    many = dream_many(h, specs, cfg, progress=False)
    t_many = time.perf_counter() - t0
    relax_solo = sum(r.stats["seconds"]["relax"] for r in solo)
    relax_many = sum(r.stats["seconds"]["relax"] for r in many)
    print(f"end to end, {args.e2e} targets: one by one {t_solo:.1f} s, dream_many {t_many:.1f} s",
          flush=True)

    lines += ["", f"End to end, {args.e2e} targets, {args.e2e_steps} relaxation steps and "
              f"{args.e2e_swaps} swap iterations each (torch):", "",
              "| run | seconds | of which relaxation |", "|---|---:|---:|",
              f"| {args.e2e} x dream (one by one) | {t_solo:.1f} | {relax_solo:.1f} |",
              f"| dream_many (one shared relaxation) | {t_many:.1f} | {relax_many:.1f} |"]
    write_result(f"batch_targets_{args.device}.md", lines)


if __name__ == "__main__":
    main()

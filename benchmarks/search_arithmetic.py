"""The search's bf16 arithmetic with and without the bfloat16 weight copies
(``featviz.model.precision.SearchArithmetic``), alternating in one process.

Each round dreams each target twice per variant at fixed step counts: once only the
relaxation (``--steps`` steps, no swaps) and once only the swaps (``--swap-iters``
iterations, no relaxation), and times those stages from the result's stats.  Both
variants must give the same frontier (the copies are exactly what autocast casts to);
the script checks that.

Run:  python benchmarks/search_arithmetic.py [--rounds 3] [--out search_arithmetic_cpu.md]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import featviz  # noqa: E402
import featviz.search.target_search as target_search  # noqa: E402
from featviz.search.config import DreamConfig  # noqa: E402

TARGETS = ("mlp:6:308", "mlp:14:1333", "mlp:27:192")
KEEP = target_search.weight_copies_fit


def stage_seconds(handle, target, cfg, copies: bool):
    target_search.weight_copies_fit = KEEP if copies else (lambda h, c: False)
    try:
        res = featviz.dream(handle, target, cfg, progress=False)
    finally:
        target_search.weight_copies_fit = KEEP
    key = [(c.text, c.activation, c.xe) for c in res.frontier]
    return res.stats, key


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--swap-iters", type=int, default=4)
    ap.add_argument("--out", default="search_arithmetic_cpu.md")
    args = ap.parse_args()
    h = featviz.load_model()
    common = dict(seed=0, precision="bf16", init_samples=16, beam_lams=())
    relax_cfg = DreamConfig(steps=args.steps, swap_iters=0, **common)
    swap_cfg = DreamConfig(steps=0, swap_iters=args.swap_iters, **common)
    times = {(t, v, s): [] for t in TARGETS for v in (False, True) for s in ("relax", "swaps")}
    for r in range(args.rounds):
        for t in TARGETS:
            target = featviz.parse_target(t, h)
            keys = {}
            for v in ((False, True) if r % 2 == 0 else (True, False)):
                st, k1 = stage_seconds(h, target, relax_cfg, v)
                times[(t, v, "relax")].append(st["seconds"]["relax"] / max(1, st["relax_steps"]))
                st, k2 = stage_seconds(h, target, swap_cfg, v)
                times[(t, v, "swaps")].append(st["seconds"]["swaps"] / max(1, st["swap_iters"]))
                keys[v] = (k1, k2)
            assert keys[False] == keys[True], f"{t}: the copies changed the search's result"
            print(f"round {r} {t}: " + ", ".join(
                f"{s} {'copies' if v else 'autocast'} {times[(t, v, s)][-1]:.3f} s"
                for s in ("relax", "swaps") for v in (False, True)), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = ["# The search's bf16 arithmetic: weight copies vs plain autocast (CPU)", "",
             f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"{time.strftime('%Y-%m-%d')}; smollm2-135m, length 12, 8 rows.  Per stage: "
             f"seconds per relaxation step ({args.steps} steps, no swaps) and per swap "
             f"iteration ({args.swap_iters} iterations, no relaxation), median of "
             f"{args.rounds} rounds, the variants alternating.  Both variants gave the "
             "same frontier on every target and round (checked).", "",
             "| target | relax step, autocast (s) | relax step, copies (s) | speed-up | "
             "swap iteration, autocast (s) | swap iteration, copies (s) | speed-up |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for t in TARGETS:
        cells = []
        for s in ("relax", "swaps"):
            a, b = med[(t, False, s)], med[(t, True, s)]
            cells += [f"{a:.3f}", f"{b:.3f}", f"{a / b:.2f}x"]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    out = os.path.join(HERE, "results", args.out)
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Alternating torch / JAX step timings for the rows where the JAX issue's bar is close.

backend_speed.py times each backend once per row; on this shared 2-core machine one
torch measurement can move by 30 % between runs.  Here each row alternates torch eager
fp32 and JAX bf16 (the search's default) for several rounds in one process and reports
the median of each backend's per-round medians, and every round's ratio.

Run:  python benchmarks/backend_ab.py [--rounds 3] [--steps 4]
Writes benchmarks/results/backend_ab.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from _results import write_result  # noqa: E402
from backend_speed import jax_steps, torch_steps  # noqa: E402

import featviz  # noqa: E402

ROWS = [(6, 308, True, 8), (6, 308, True, 32), (24, 1097, False, 32), (24, 1097, True, 32),
        (24, 1097, False, 8), (24, 1097, True, 8)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    h = featviz.load_model()
    import jax
    lines = ["# Relaxation step: torch eager fp32 vs JAX bf16, alternating", "",
             f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, jax "
             f"{jax.__version__}, model {h.name}, length 12; per round: median of "
             f"{args.steps} steps after a warm-up step for each backend, torch then JAX; "
             f"{args.rounds} rounds per row.", "",
             "| layer | fluency term | batch | torch fp32 (steps/s) | JAX bf16 (steps/s) "
             "| JAX / torch (median) | per-round ratios | bar |",
             "|---:|---|---:|---:|---:|---:|---|---:|"]
    for layer, idx, fluency, B in ROWS:
        t = featviz.parse_target(f"mlp:{layer}:{idx}", h)
        lam = torch.full((B,), 0.3 if fluency else 0.0)
        tt, tj = [], []
        for _ in range(args.rounds):
            tt.append(torch_steps(h, t, B, 12, lam, args.steps, "fp32"))
            tj.append(jax_steps(h, t, B, 12, lam, args.steps, precision="bf16")[0])
        ratio = float(np.median(tt)) / float(np.median(tj))
        bar = 1.8 if B == 8 else 2.0
        per = ", ".join(f"{a / b:.2f}" for a, b in zip(tt, tj))
        print(f"layer {layer} fluency {fluency} batch {B}: torch {1 / np.median(tt):.2f}/s, "
              f"jax bf16 {1 / np.median(tj):.2f}/s, {ratio:.2f}x ({per})", flush=True)
        lines.append(f"| {layer} | {'yes' if fluency else 'no'} | {B} | "
                     f"{1 / np.median(tt):.2f} | {1 / np.median(tj):.2f} | {ratio:.2f}x | "
                     f"{per} | {'met' if ratio >= bar else 'not met'} ({bar}x) |")
    write_result("backend_ab.md", lines)


if __name__ == "__main__":
    main()

"""What the relaxation's hard rows look like, step by step: how many of their tokens are
still the model-sampled start, their xe and activation (the exact scores the straight-
through forward computes), per parameterization.

Each variant dreams each target with a fixed number of relaxation steps and no swaps
(seed 0); the relaxation's trace is read from the torch Relaxer.  Variants: featviz's
logits (Gumbel-softmax over Adam-trained logits, the default), the same with ADC's
dense-to-sparse support (``sparse_k`` 16), and PGD's projected distributions
(``simplex``) at two learning rates.

Run:  python benchmarks/relax_samples.py [--steps 40] [--out relax_samples_cpu.md]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import featviz  # noqa: E402
import featviz.backends.torch.relax as torch_relax  # noqa: E402
from _results import write_result  # noqa: E402
from featviz.search.config import DreamConfig  # noqa: E402

TARGETS = ("mlp:6:308", "mlp:14:1333", "mlp:27:192")
VARIANTS = {
    "logits (default)": {},
    "logits, sparse_k 16": {"sparse_k": 16},
    "simplex, lr 0.1": {"simplex": True, "lr": 0.1},
    "simplex, lr 0.03": {"simplex": True, "lr": 0.03},
}
FLUENT = 6.5


def traced(handle, target, cfg):
    """The relaxation's trace and the starting tokens of one dream."""
    got, orig = {}, torch_relax.relax

    def spy(h, t, theta, *a, **k):
        got["start"] = theta.detach().argmax(-1).clone()
        got["trace"] = orig(h, t, theta, *a, **k)
        return got["trace"]
    torch_relax.relax = spy
    try:
        featviz.dream(handle, target, cfg, progress=False)
    finally:
        torch_relax.relax = orig
    return got["start"], got["trace"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--out", default="relax_samples_cpu.md")
    a = ap.parse_args()
    handle = featviz.load_model()
    marks = sorted({0, 1, 5, 10, 20, a.steps - 1})
    rows = {}
    for name, over in VARIANTS.items():
        per = []
        for t in a.targets.split(","):
            start, tr = traced(handle, t, DreamConfig(steps=a.steps, swap_iters=0, seed=0,
                                                      **over))
            best0 = None
            line = {"sec": tr.seconds / max(tr.steps, 1), "resets": tr.resets}
            best = -float("inf")
            for s, (ids, act, xe) in enumerate(tr.samples):
                ok = torch.isfinite(xe) & (xe <= FLUENT)
                if ok.any():
                    best = max(best, float(act[ok].max()))
                if s == 0:
                    best0 = best
                if s in marks:
                    line[s] = (float((ids == start).float().mean()),
                               float(xe[torch.isfinite(xe)].mean()), float(act.mean()))
            line["gain"] = best - best0 if best0 is not None and best0 > -float("inf") \
                else float("nan")
            per.append(line)
            print(name, t, {k: v for k, v in line.items()}, flush=True)
        rows[name] = per
    out = [f"# The relaxation's hard rows, step by step ({platform.machine()} CPU)", "",
           f"torch {torch.__version__}, embedded SmolLM2-135M, targets {a.targets}, "
           f"{a.steps} relaxation steps and no swaps, seed 0, featviz's default population "
           "(8 rows, model-sampled start).  Each cell: mean over targets of (share of the "
           "hard rows' tokens equal to the start / mean xe of the hard rows / mean "
           "activation); last columns: seconds per step, resets, and how much the best "
           f"hard row at xe ≤ {FLUENT} rose above step 0's (activation units, mean over the "
           "targets with one).", "",
           "| variant | " + " | ".join(f"step {s}" for s in marks)
           + " | s/step | resets | best fluent gain |",
           "|---|" + "---|" * len(marks) + "---:|---:|---:|"]
    for name, per in rows.items():
        cells = []
        for s in marks:
            vals = [p[s] for p in per if s in p]
            cells.append(" / ".join(f"{statistics.mean(v[i] for v in vals):.2f}"
                                    for i in range(3)) if vals else "–")
        gains = [p["gain"] for p in per if p["gain"] == p["gain"]]
        out.append(f"| {name} | " + " | ".join(cells)
                   + f" | {statistics.mean(p['sec'] for p in per):.2f}"
                   + f" | {statistics.mean(p['resets'] for p in per):.0f}"
                   + (f" | {statistics.mean(gains):.3f} |" if gains else " | no fluent row |"))
    write_result(a.out, out)


if __name__ == "__main__":
    main()

"""Does a dream keep its time budget?  ``dream`` on each dev neuron at --budget seconds
(the default search), recording the dream's own total, the wall time of the call, and
where the time went (init, relaxation, swaps, verification).

Run:  python benchmarks/budget_adherence.py [--budget 90] [--tag cpu]
Writes benchmarks/results/budget_adherence_<tag>.md (and .json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402

import featviz  # noqa: E402
from benchmarks._results import write_result  # noqa: E402
from featviz.search.api import dream
from featviz.search.config import DreamConfig  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=90.0)
    ap.add_argument("--tag", default="cpu")
    ap.add_argument("--note", default="", help="a line on the conditions (e.g. a shared machine)")
    args = ap.parse_args()
    specs = json.load(open(os.path.join(HERE, "..", "..", "shared", "bench", "dev_neurons.json")))["targets"] \
        if os.path.exists(os.path.join(HERE, "..", "..", "shared", "bench", "dev_neurons.json")) else \
        ["mlp:2:663", "mlp:6:308", "mlp:10:808", "mlp:14:1333", "mlp:18:98", "mlp:21:148",
         "mlp:24:1097", "mlp:27:192"]
    h = featviz.load_model()
    rows = []
    for s in specs:
        t0 = time.perf_counter()
        r = dream(h, s, DreamConfig(budget_seconds=args.budget), progress=False)
        wall = time.perf_counter() - t0
        sec = r.stats["seconds"]
        rows.append({"target": s, "wall": wall, "total": sec["total"], "init": sec.get("init"),
                     "relax": sec.get("relax"), "swaps": sec.get("swaps"), "verify": sec.get("verify"),
                     "swap_iters": r.stats["swap_iters"], "relax_steps": r.stats["relax_steps"],
                     "precision": r.stats.get("precision"),
                     "last_iter_fraction": r.stats.get("last_iter_fraction")})
        print(json.dumps(rows[-1]), flush=True)
    over = [100 * (x["total"] / args.budget - 1) for x in rows]
    wover = [100 * (x["wall"] / args.budget - 1) for x in rows]
    lines = [f"# Budget adherence: dream at {args.budget:g} s per dev neuron", "",
             f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"search precision {rows[0]['precision']} (auto), model smollm2-135m; "
             "default DreamConfig with budget_seconds set. " + args.note, "",
             "| neuron | dream total (s) | call wall (s) | vs budget | init | relax | swaps | "
             "verify | swap iterations | relax steps | last iteration scaled to |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    f = lambda v: "—" if v is None else f"{v:.1f}"  # noqa: E731
    for x, o in zip(rows, over):
        lines.append(f"| {x['target']} | {x['total']:.1f} | {x['wall']:.1f} | {o:+.1f} % | "
                     f"{f(x['init'])} | {f(x['relax'])} | {f(x['swaps'])} | {f(x['verify'])} | "
                     f"{x['swap_iters']} | {x['relax_steps']} | "
                     f"{'—' if x['last_iter_fraction'] is None else x['last_iter_fraction']} |")
    lines += ["", f"Dream total vs budget: {min(over):+.1f} % to {max(over):+.1f} %; call wall time "
              f"{min(wover):+.1f} % to {max(wover):+.1f} % (worst case: the largest)."]
    write_result(f"budget_adherence_{args.tag}.md", lines)
    with open(os.path.join(HERE, "results", f"budget_adherence_{args.tag}.json"), "w") as fh:
        json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()

"""Batched dreaming on a GPU: targets per hour by group size, the quality at the gallery's
settings, mining cost, and the projection to every MLP neuron of the embedded model.

    python benchmarks/gallery_gpu.py [--out DIR] [--limit-seconds 480]

On the device machine.  At the gallery's step caps (60 relaxation steps, 40 swap
iterations, no time budget, so every group size does the same work per target):
- ``dream_many`` over neurons of layer 6 in groups of 1, 16, 64 and the largest that fits
  (``search.budget.fit_group``): seconds, targets per hour, peak GPU memory;
- the 8 dev neurons dreamt as one group of 8: each one's fluent ratio (best activation at
  xe <= 6.5 over its corpus max, benchmarks/results/corpus_max_200000.json), and whether
  a group's results equal one-at-a-time on this device;
- the same group without the relaxation (``steps`` 0): its seconds and fluent ratios, so
  the relaxation's share of a group's time and what it adds at equal swap work;
- mining all 1,536 neurons of layer 6 over 20,000 tokens in one streaming pass;
- the projected hours for all 46,080 MLP neurons (dreaming at the best group's rate plus
  mining of every layer).
Writes gallery_gpu.json (and .md) to --out.  Stops starting new measurements at
--limit-seconds, so a device session's budget holds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import featviz  # noqa: E402
from featviz import DreamConfig  # noqa: E402
from featviz.mining.miner import MineConfig, mine  # noqa: E402
from featviz.search.api import dream, dream_many  # noqa: E402
from featviz.search.budget import fit_group  # noqa: E402

DEV = os.path.join(HERE, "..", "..", "shared", "bench", "dev_neurons.json")
CMAX = os.path.join(HERE, "results", "corpus_max_200000.json")
DEV_NEURONS = ["mlp:2:663", "mlp:6:308", "mlp:10:808", "mlp:14:1333", "mlp:18:98", "mlp:21:148",
               "mlp:24:1097", "mlp:27:192"]      # the file's list, for a machine without it


def gallery_cfg(quick: bool) -> DreamConfig:
    if quick:                                 # a CPU smoke run of this script
        return DreamConfig(steps=4, swap_iters=2, init_samples=8, beam_lams=(0.1,),
                           beam_width=2, beam_expand=8)
    return DreamConfig(steps=60, swap_iters=40)   # the gallery's caps, no time budget


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed_group(h, specs, cfg):
    dev = h.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    sync(dev)
    t = time.perf_counter()
    res = dream_many(h, specs, cfg, progress=False)
    sync(dev)
    secs = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated(dev) / 2 ** 30 if dev.type == "cuda" else None
    return res, secs, peak


def fluent_summary(results, cmax) -> dict:
    """Each result's fluent ratio (its verified best activation at xe <= xe_cap over its
    corpus max; 0 when it has none, None without a corpus max) and their median."""
    ratios = {r.target: None if not cmax.get(r.target) else round(
        (r.best_fluent.activation if r.best_fluent else 0.0) / cmax[r.target], 3)
        for r in results}
    vals = [v for v in ratios.values() if v is not None]
    return {"fluent_ratio": ratios,
            "median_fluent_ratio": statistics.median(vals) if vals else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--limit-seconds", type=float, default=480.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--groups", default="1,16,64,max", help="group sizes to time ('none': "
                    "skip to the quality)")
    ap.add_argument("--dev", type=int, default=None, help="only the first N dev neurons")
    args = ap.parse_args()
    if args.dev is not None and args.dev < 1:
        ap.error(f"--dev must be at least 1, got {args.dev}")
    t_start = time.perf_counter()
    left = lambda: args.limit_seconds - (time.perf_counter() - t_start)  # noqa: E731
    out = {"device": None, "groups": [], "quality": None, "mining": None}

    def save():
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gallery_gpu.json"), "w") as f:
            json.dump(out, f, indent=1)

    h = featviz.load_model(device=args.device)
    dev = h.device
    out["device"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    out["load_seconds"] = round(time.perf_counter() - t_start, 1)
    cfg = gallery_cfg(args.quick)
    out["config"] = {"steps": cfg.relax.steps, "swap_iters": cfg.swaps.swap_iters,
                     "batch": cfg.rows.batch, "length": cfg.length,
                     "precision": cfg.precision}
    print("loaded", out["device"], out["load_seconds"], flush=True)
    # warm-up (CUDA context, kernels) outside every timed figure
    dream_many(h, ["mlp:6:1000", "mlp:6:1001"], gallery_cfg(True), progress=False)
    largest = fit_group(h, featviz.parse_target("mlp:6:0", h), cfg, 1024, limit=1024)
    out["largest_fitting_group"] = largest
    sizes = []
    for g in ([] if args.groups == "none" else args.groups.split(",")):
        k = largest if g == "max" else int(g)
        if k not in sizes:
            sizes.append(k)
    per_target = None
    for k in sizes:
        n = max(k, 2 if k == 1 else k)        # group 1: two targets one at a time
        est = None if per_target is None else per_target * n * (1.0 if k == 1 else 0.5)
        if left() < 30 or (est is not None and est > left() - 30):
            out["groups"].append({"group": k, "skipped": f"about {est or 0:.0f} s needed, "
                                                         f"{left():.0f} s left"})
            save()
            continue
        specs = [f"mlp:6:{i}" for i in range(n)]
        if k == 1:
            t = time.perf_counter()
            peak = 0.0
            for s in specs:
                _, _, p = timed_group(h, [s], cfg)
                peak = max(peak, p or 0.0)
            secs = time.perf_counter() - t
        else:
            _, secs, peak = timed_group(h, specs, cfg)
        row = {"group": k, "targets": n, "seconds": round(secs, 2),
               "targets_per_hour": round(n / secs * 3600, 1),
               "peak_gpu_gib": None if peak is None else round(peak, 2)}
        per_target = secs / n if per_target is None else min(per_target, secs / n)
        out["groups"].append(row)
        print(row, flush=True)
        save()
    # quality at the gallery's settings: the dev neurons as one group, and group == alone?
    dev_specs = json.load(open(DEV))["targets"] if os.path.exists(DEV) else DEV_NEURONS
    dev_specs = dev_specs[:args.dev]
    cmax = {t: v["max"] for t, v in json.load(open(CMAX))["targets"].items()}
    if left() > 60:
        res, secs, _ = timed_group(h, dev_specs, cfg)
        out["quality"] = {"seconds": round(secs, 1), **fluent_summary(res, cmax),
                          "texts": {r.target: r.best_fluent.text if r.best_fluent else None
                                    for r in res}}
        save()
        if left() > 60:
            strip = lambda r: {k: v for k, v in r.to_json().items() if k != "stats"}  # noqa
            solo = [dream(h, s, cfg, progress=False) for s in dev_specs[:2]]
            out["quality"]["group_equals_alone_first_two"] = [
                strip(a) == strip(b) for a, b in zip(res[:2], solo)]
            out["quality"]["alone_fluent_ratio_first_two"] = list(
                fluent_summary(solo, cmax)["fluent_ratio"].values())
            save()
    if left() > 60:     # the relaxation's share and worth in a group: the same group without it
        res0, secs0, _ = timed_group(h, dev_specs, cfg.replace(steps=0, relax_fraction=0.0))
        out["no_relaxation"] = {"seconds": round(secs0, 1), **fluent_summary(res0, cmax)}
        save()
    if left() > 40:
        layer = [featviz.parse_target(f"mlp:6:{i}", h) for i in range(h.d_mlp)]
        sync(dev)
        t = time.perf_counter()
        mine(h, layer, MineConfig(max_tokens=2000 if args.quick else 20_000,
                                  batch_size=64 if dev.type == "cuda" else 16), progress=False)
        sync(dev)
        out["mining"] = {"neurons": len(layer), "tokens": 2000 if args.quick else 20_000,
                         "seconds": round(time.perf_counter() - t, 1)}
        save()
    done = [g for g in out["groups"] if "targets_per_hour" in g]
    if done:
        best = max(done, key=lambda g: g["targets_per_hour"])
        total = h.n_layers * h.d_mlp
        mining_h = (out["mining"]["seconds"] * h.n_layers / 3600) if out["mining"] else None
        out["projection"] = {
            "mlp_neurons": total, "best_group": best["group"],
            "dream_hours": round(total / best["targets_per_hour"], 2),
            "mining_hours": None if mining_h is None else round(mining_h, 3),
            "batched_over_one_at_a_time": round(best["targets_per_hour"] / done[0]["targets_per_hour"], 2)
            if done[0]["group"] == 1 else None}
    out["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    save()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

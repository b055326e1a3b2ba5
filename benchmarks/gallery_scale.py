"""A gallery of N neurons of one layer at fixed steps, three ways, on this machine:
one process, --dream-group 4, and a local Ray cluster with 2 workers.  Targets per hour
and the peak RSS of the whole process tree (Ray's workers included), sampled every 0.2 s.

    python benchmarks/gallery_scale.py [--targets mlp:6:0-63] [--steps 8 --swap-iters 4]
                                       [--config benchmarks/gallery_scale.yaml]

Writes results/gallery_scale_cpu.md.  Run nothing else meanwhile.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._results import write_result  # noqa: E402


def tree_rss(p: psutil.Process) -> int:
    total = 0
    for q in [p] + p.children(recursive=True):
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total


def run(cmd: list, limit: float) -> tuple[float, int] | None:
    """(wall seconds, peak RSS of the process tree), or None when it ran past ``limit``
    seconds (then it is killed with its children)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(ps))
        if time.perf_counter() - t0 > limit:
            os.killpg(proc.pid, 9)
            proc.wait()
            return None
        time.sleep(0.2)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode})")
    return time.perf_counter() - t0, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default="mlp:6:0-63")
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--swap-iters", dest="swap_iters", type=int, default=4)
    ap.add_argument("--config", default=None, help="a dreaming preset (YAML) for every way")
    ap.add_argument("--limit", type=float, default=1500.0, help="seconds one way may run")
    args = ap.parse_args()
    base = [sys.executable, "-m", "featviz", "gallery", "--targets", args.targets, "--tokens",
            str(args.tokens), "--steps", str(args.steps), "--swap-iters", str(args.swap_iters),
            "--cache-dir", "", "--device", "cpu"] + (["--config", args.config] if args.config else [])
    ways = [("one process", []), ("--dream-group 4", ["--dream-group", "4"]),
            ("local Ray, 2 workers", ["--ray", "auto", "--ray-workers", "2"])]
    rows, outs = [], {}
    for name, extra in ways:
        out = tempfile.mkdtemp(prefix="featviz-scale-")
        got = run(base + extra + ["--out", out], args.limit)
        if got is None:
            rows.append((name, None, args.limit, None, None, None))
            print(rows[-1], flush=True)
            continue
        secs, peak = got
        man = json.load(open(os.path.join(out, "gallery.json")))
        n = len(man["targets"])
        rows.append((name, n, secs, n / secs * 3600, peak / 2 ** 20,
                     man["runs"]["targets_per_hour"]))
        outs[name] = out
        print(rows[-1], flush=True)
    same = {}
    ref = outs["one process"]
    for name, out in outs.items():
        same[name] = all(
            {k: v for k, v in json.load(open(os.path.join(ref, "targets", f))).items()
             if k != "timing"} ==
            {k: v for k, v in json.load(open(os.path.join(out, "targets", f))).items()
             if k != "timing"}
            for f in os.listdir(os.path.join(ref, "targets")) if f.endswith(".json"))
    lines = ["# Gallery scale on this CPU", "",
             f"`featviz gallery --targets {args.targets} --tokens {args.tokens} --steps "
             f"{args.steps} --swap-iters {args.swap_iters}"
             + (f" --config {args.config}" if args.config else "") +
             "` on the embedded model, one run each, "
             f"in this order, on an otherwise idle {os.cpu_count()}-core machine. Wall time "
             "includes the model load (and Ray's start); targets/h (run) is the manifest's "
             "figure, from the start of mining to the last target.", "",
             "| way | targets | wall (s) | targets/h (wall) | targets/h (run) | peak RSS of the "
             "process tree (MiB) | records equal to one process |", "|---|---|---|---|---|---|---|"]
    for name, n, secs, tph, rss, run_tph in rows:
        if n is None:
            lines.append(f"| {name} | - | > {secs:.0f} (killed) | - | - | - | - |")
            continue
        lines.append(f"| {name} | {n} | {secs:.0f} | {tph:.0f} | {run_tph:.0f} | {rss:.0f} | "
                     f"{'yes' if same[name] else 'no'} |")
    write_result("gallery_scale_cpu.md", lines)


if __name__ == "__main__":
    main()

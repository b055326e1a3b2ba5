"""Mining throughput against a bare hooked forward over the same windows.

For each case, tokens per second of (a) `featviz.mining.miner.mine` (forward + hooks +
gather + streaming top-k / histogram / reservoirs / controls) and (b) the bare hooked
forward alone (`featviz.readout.run` on the same batches, nothing kept).  Both read
the same pre-tokenised windows, so tokenisation is in neither figure.  Runs
alternate (bare, miner, bare, miner, ...) and the best of --repeats is kept.
Also reports peak RSS of a mining run at two corpus sizes (memory must stay flat).

Run: python benchmarks/mining_speed.py [--tokens 20000] [--repeats 2]
Writes benchmarks/results/mining_speed.md
"""
import argparse
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch
from _results import write_result

import featviz
import featviz.mining.corpus as corpus_mod
from featviz.mining.miner import MineConfig, Miner, mine
from featviz.model.forward import run
from featviz.targets.core import all_sites

CASES = [("8 dev neurons (layers 2-27)", ["mlp:2:663", "mlp:6:308", "mlp:10:808", "mlp:14:1333",
                                         "mlp:18:98", "mlp:21:148", "mlp:24:1097", "mlp:27:192"]),
         ("1536 neurons of layer 6", ["mlp:6:0-1535"]),
         ("3 x 1536 neurons, layers 2, 6, 10", ["mlp:2:0-1535", "mlp:6:0-1535", "mlp:10:0-1535"]),
         ("all 9 heads of layers 0-11 (head norms)", [f"head:{i}:0-8" for i in range(12)])]


def bare(handle, sites, wins, batch):
    t0 = time.perf_counter()
    for i in range(0, len(wins), batch):
        ids = torch.as_tensor(np.stack([w.ids for w in wins[i:i + batch]]))
        with torch.no_grad():
            run(handle, sites, input_ids=ids)
    return time.perf_counter() - t0


def mined(handle, targets, wins, cfg):
    """(seconds end to end, seconds of the one-off ``finish`` at the end of the pass)."""
    real, real_finish = corpus_mod.windows, Miner.finish
    spent = []

    def timed_finish(self):
        t = time.perf_counter()
        out = real_finish(self)
        spent.append(time.perf_counter() - t)
        return out
    corpus_mod.windows = lambda *a, **k: iter(wins)
    Miner.finish = timed_finish
    try:
        t0 = time.perf_counter()
        mine(handle, targets, cfg, progress=False)
        return time.perf_counter() - t0, spent[0]
    finally:
        corpus_mod.windows, Miner.finish = real, real_finish


def rss_child(tokens):
    code = ("import featviz, resource; from featviz.mining.miner import Miner, MineConfig, mine; "
            "m = featviz.load_model(); ts = featviz.parse_targets('mlp:6:0-1535', m); "
            f"mine(m, ts, MineConfig(max_tokens={tokens}), progress=False); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rss", default="50000,500000", help="corpus sizes for the RSS check ('' = skip)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    m = featviz.load_model()
    cfg = MineConfig(max_tokens=args.tokens)
    wins = list(corpus_mod.windows(m, None, cfg.window, max_tokens=args.tokens))
    n_tok = len(wins) * cfg.window
    rows = []
    for name, specs in CASES:
        ts = [t for s in specs for t in featviz.parse_targets(s, m)]
        sites = all_sites(ts)
        tb, tm = [bare(m, sites, wins, cfg.batch_size)], []
        for _ in range(args.repeats):
            tm.append(mined(m, ts, wins, cfg))
            tb.append(bare(m, sites, wins, cfg.batch_size))
        best = min(tm)
        sb, sm, ss = n_tok / min(tb), n_tok / best[0], n_tok / (best[0] - best[1])
        rows.append((name, len(ts), sb, ss, ss / sb, sm, sm / sb, best[1]))
        print(f"{name}: bare {sb:.0f} tok/s, miner streaming {ss:.0f} tok/s ({ss / sb:.0%}), "
              f"end to end {sm:.0f} tok/s ({sm / sb:.0%}), finish {best[1]:.1f} s", flush=True)
    rss = []
    for n in [int(x) for x in args.rss.split(",") if x]:
        rss.append((n, rss_child(n)))
        print(f"peak RSS mining 1536 neurons over {n} tokens: {rss[-1][1]:.0f} MiB", flush=True)
    lines = ["# Mining throughput", "",
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
             f"{torch.__version__}, model {m.name}; {n_tok} tokens in {len(wins)} windows of "
             f"{cfg.window} (+BOS), batch {cfg.batch_size}; best of {args.repeats}.", "",
             "Streaming = the pass over the corpus (forward, hooks, gather, top-k, histogram, "
             "reservoirs, controls); end to end adds `finish`, a one-off cost per target that "
             "does not grow with the corpus.", "",
             "| case | targets | bare hooked forward (tok/s) | miner streaming (tok/s) | streaming / bare "
             "| miner end to end (tok/s) | end to end / bare | finish (s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {n} | {k} | {b:.0f} | {s:.0f} | {r:.0%} | {e:.0f} | {re:.0%} | {f:.1f} |"
              for n, k, b, s, r, e, re, f in rows]
    if rss:
        lines += ["", "Peak RSS of a whole process mining 1536 neurons of layer 6 (model included):", "",
                  "| corpus tokens | peak RSS (MiB) |", "|---:|---:|"]
        lines += [f"| {n} | {r:.0f} |" for n, r in rss]
    write_result("mining_speed.md", lines)


if __name__ == "__main__":
    main()

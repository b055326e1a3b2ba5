"""Corpus max of the dev neurons over the first N tokens of the embedded corpus.

Writes benchmarks/results/corpus_max.json (used by dream_quality.py).
Run: python benchmarks/corpus_max.py [--tokens 200000]
"""
import argparse
import json
import os
import time

import featviz
from featviz.mining.miner import scan

HERE = os.path.dirname(os.path.abspath(__file__))
DEV = os.path.join(HERE, "..", "..", "shared", "bench", "dev_neurons.json")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=200_000)
    ap.add_argument("--window", type=int, default=63)
    ap.add_argument("--neurons", default=DEV)
    args = ap.parse_args()
    specs = json.load(open(args.neurons))["targets"]
    m = featviz.load_model()
    ts = [featviz.parse_target(s, m) for s in specs]
    t0 = time.time()
    res = scan(m, ts, None, window=args.window, max_tokens=args.tokens, k=5)
    secs = time.time() - t0
    out = {"tokens": res[0].n_tokens, "window": args.window, "seconds": secs,
           "tokens_per_second": res[0].n_tokens / secs,
           "targets": {r.target: {"max": r.max, "top_texts": [m.decode(e.token_ids[1:e.peak + 1])[-200:]
                                                              for e in r.top[:3]]}
                       for r in res}}
    path = os.path.join(HERE, "results", f"corpus_max_{args.tokens}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({k: v["max"] for k, v in out["targets"].items()}, indent=1), secs)


if __name__ == "__main__":
    main()

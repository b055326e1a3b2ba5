"""How much of a dreamed activation survives a one-token edit (reads a dream_quality run).

For every (neuron, method) row of a ``dream_quality_<tag>.jsonl``, the prompt a row
reports (featviz: its best fluent text, xe <= 6.5; a baseline: its best at any
fluency), and at each of its positions the model's own top-k readable alternatives put
in place of the token (the audit's attribution move, ``featviz.audit``).  Per position,
the share of the activation lost when the *best* of those alternatives stands there:
a prompt whose every token is load-bearing (a needle) loses most of it wherever it is
touched; text that expresses a concept keeps much of it under a plausible edit.

Run:  python benchmarks/dream_robustness.py [--tag cpu-v6] [--alternatives 8]
Writes benchmarks/results/dream_robustness_<tag>.md (and .json).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import featviz  # noqa: E402
from featviz.analysis.audit import attribute, values_batched  # noqa: E402
from featviz.model.vocab import readable_mask  # noqa: E402


def robustness(handle, target, text: str, k: int, mask) -> dict:
    """Activation of ``text`` (BOS + its tokens) and, per position, the share lost when
    the best of the model's top-k alternatives replaces that token."""
    row = [handle.bos_id] + handle.encode(text)
    base = float(values_batched(handle, target, [row], span_start=1)[0])
    per = attribute(handle, target, row, list(range(1, len(row))), None, base, k, mask,
                     span_start=1)
    # a share of a non-positive activation means nothing: such a prompt gets none.  Shares
    # are signed: a negative one is an edit that *raised* the activation (not floored at 0,
    # which would hide that the prompt was not a local maximum)
    shares = [p["share"] for p in per if p["share"] is not None] if base > 0 else []
    return {"activation": base, "shares": shares,
            "median_share": statistics.median(shares) if shares else None,
            "positions_over_half": sum(s > 0.5 for s in shares),
            "positions_raised": sum(s < 0 for s in shares),
            "min_share": min(shares) if shares else None,
            "tokens": [p["token"] for p in per]}


def fmt(v) -> str:
    return "—" if v is None else f"{v:.2f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tag", default="cpu-v6")
    ap.add_argument("--alternatives", type=int, default=8)
    args = ap.parse_args()
    src = os.path.join(HERE, "results", f"dream_quality_{args.tag}.jsonl")
    if not os.path.exists(src):
        sys.exit(f"{src} is missing; run python benchmarks/dream_quality.py --tag {args.tag}")
    rows = [json.loads(x) for x in open(src)]
    handle = featviz.load_model()
    mask = readable_mask(handle)
    out = []
    for r in rows:
        fluent = r["method"].startswith("featviz")
        text = r["text_6.5"] if fluent else r["text_any"]
        if text is None:
            continue
        target = featviz.parse_target(r["target"], handle)
        res = robustness(handle, target, text, args.alternatives, mask)
        res.update(target=r["target"], method=r["method"], text=text,
                   reported=r["act_6.5"] if fluent else r["act_any"],
                   which="fluent (xe ≤ 6.5)" if fluent else "any fluency")
        out.append(res)
        print(f"{r['target']} {r['method']}: {res['activation']:.2f}, median share lost "
              f"{fmt(res['median_share'])}, positions > 50 %: {res['positions_over_half']}",
              flush=True)
    lines = [f"# One-token edits of the reported prompts (dream_quality_{args.tag}, "
             f"top-{args.alternatives} model alternatives)", "",
             "Per prompt: its activation, and over its positions the share of that activation "
             "lost when the best of the model's top alternatives replaces the token there "
             "(median, and how many positions lose more than half). Shares are signed: a "
             "negative share is an edit that raised the activation (the lowest is listed, and "
             "how many positions had one).", "",
             "| neuron | method | prompt | activation | median share lost | positions losing > 50 % "
             "| positions raised | lowest share |",
             "|---|---|---|---|---|---|---|---|"]
    for o in out:
        lines.append(f"| {o['target']} | {o['method']} ({o['which']}) | {repr(o['text']).replace('|', '&#124;')} | "
                     f"{o['activation']:.2f} | {fmt(o['median_share'])} | "
                     f"{o['positions_over_half']}/{len(o['shares'])} | "
                     f"{o['positions_raised']}/{len(o['shares'])} | {fmt(o['min_share'])} |")
    by = {}
    for o in out:
        if o["median_share"] is not None:
            by.setdefault(o["method"], []).append(o["median_share"])
    lines.append("")
    for m, v in by.items():
        lines.append(f"- {m}: median over neurons of the median share lost "
                     f"{statistics.median(v):.2f} ({len(v)} prompts)")
    base = os.path.join(HERE, "results", f"dream_robustness_{args.tag}")
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(base + ".json", "w") as f:
        json.dump(out, f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

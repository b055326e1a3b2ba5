"""Dream-quality benchmark (protocol: ../shared/bench/README.md).

For each dev neuron and method, at a fixed wall-clock budget per neuron (model
loading excluded), the best activation at xe <= 5.0, xe <= 6.5 and unbounded, each
recomputed by a fresh forward pass on the decoded-and-re-encoded text, over the
corpus max (first 200,000 tokens, BOS + 63-token windows; benchmarks/corpus_max.py).

Run:  python benchmarks/dream_quality.py [--budget 90] [--methods featviz,epo,gcg] [--seeds 0,1,2]
Writes benchmarks/results/dream_quality_<tag>.jsonl (one line per run, resumable)
and benchmarks/results/dream_quality_<tag>.md (the table; with several seeds, the
table of seed means and the relaxation's bar: each variant against its ``-norelax`` twin).
Runs are interleaved: for each seed, for each neuron, every method in turn.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import featviz  # noqa: E402
from benchmarks.baselines.epo import run_epo, run_gcg, sweep_grid  # noqa: E402
from featviz.model.tokens import Tokens  # noqa: E402
from featviz.search.api import dream
from featviz.search.config import DreamConfig  # noqa: E402
from featviz.search.verify import verify_one

DEV = os.path.join(HERE, "..", "..", "shared", "bench", "dev_neurons.json")
CAPS = (5.0, 6.5, math.inf)
CORPUS_TOP: dict = {}     # target -> texts of its top corpus windows, each ending at its peak

# the raw mode's probes (2026-12-07): activation alone, no relaxation, no LM-guided beams
RAW_SWAPS = {"lam_max": 0.0, "caps": (), "relax_fraction": 0.0, "steps": 0, "beam_lams": ()}
METHODS = {
    # name: DreamConfig overrides (featviz variants) or a baseline runner
    "featviz": {},
    "featviz-norelax": {"relax_fraction": 0.0, "steps": 0},
    "featviz-relax": {"relax_fraction": 0.4},   # the relaxation at any budget (the default
                                                # leaves it out under a minute)
    "featviz-nolm": {"lm_share": 0.0},
    "featviz-lmtopk": {"relax_fraction": 0.4, "lm_topk": 64},   # the relaxation samples
                                                 # only the model's top-64 next tokens
    "featviz-sparse": {"relax_fraction": 0.4, "sparse_k": 16},   # ADC-style: the relaxation
                                                 # samples theta's top-S, S annealed V -> 16
    "featviz-simplex": {"relax_fraction": 0.4, "simplex": True, "lr": 0.1},   # PGD's
                                                 # projected distributions, Gumbel-max rows
    "featviz-simplex-slow": {"relax_fraction": 0.4, "simplex": True, "lr": 0.03},
    "featviz-relaxtop": {"relax_share": 0.25},   # a quarter of the swaps from the
                                                 # relaxation's top 16 tokens per position
    "featviz-random-init": {"init": "random"},
    "featviz-jax": {"backend": "jax"},          # relaxation and swap scoring on the JAX backend
    "featviz-jax-norelax": {"backend": "jax", "relax_fraction": 0.0, "steps": 0},
    "featviz-jax-relax": {"backend": "jax", "relax_fraction": 0.4},
    "featviz-jax-simplex": {"backend": "jax", "relax_fraction": 0.4, "simplex": True, "lr": 0.1},
    "featviz-jax-simplex-short": {"backend": "jax", "relax_fraction": 0.15, "simplex": True,
                                  "lr": 0.1},   # a smaller share: fewer costly gradient rows
    "featviz-lean": {"sweep": 64, "children": 16},   # cheaper swap iterations, more of them
    "featviz-corpus-init": {"init": "corpus"},       # warm start from the corpus's top windows
                                                     # (sees corpus text: its own rows)
    "featviz-distinct": {"distinct": 3, "caps": (5.0, 6.5, 6.5, 6.5)},   # fluent rows kept
                                                     # in different basins
    "featviz-focus": {"batch": 4, "caps": (6.0, 6.5)},   # fewer rows, all near the 6.5
                                                     # cap: more swap iterations per row
    "featviz-raw": {"lam_max": 0.0, "caps": ()},   # activation alone, the audit's regime
                                                 # (rows of its own); the first raw mode:
                                                 # its eight rows collapse onto one
    "featviz-raw-caps": {"lam_max": 0.0, "caps": (10.0, 12.0)},   # raw, two rows capped at
                                                 # xe 10 and 12: a frontier at the xe where
                                                 # the baselines' bests lie
    "featviz-raw-swaps": RAW_SWAPS,   # raw, the whole budget in swaps after the model
                                      # samples (no relaxation, no LM beams)
    "featviz-raw-swaps-k256": {**RAW_SWAPS, "k_grad": 256},   # and wider swaps
    "featviz-raw-distinct": {**RAW_SWAPS, "distinct": 4},   # the rows (all lambda 0) kept
                                                            # 4 tokens apart: 8 parents, not 1
    "featviz-raw-distinct-k256": {**RAW_SWAPS, "distinct": 4, "k_grad": 256},
                                                 # = configs/raw.yaml from 2026-12-07 to
                                                 # 47c6101 (no halving)
    "featviz-raw-distinct-random": {**RAW_SWAPS, "distinct": 4, "init": "random"},
    "featviz-raw-distinct-b4": {**RAW_SWAPS, "distinct": 4, "batch": 4, "children": 48},
                                                 # four rows, twice the children each
    "featviz-raw-distinct-k256-s64": {**RAW_SWAPS, "distinct": 4, "k_grad": 256, "sweep": 64},
                                                 # a smaller last-position sweep (38 % of
                                                 # the swaps' time at its default 200)
    "featviz-raw-distinct-k256-s0": {**RAW_SWAPS, "distinct": 4, "k_grad": 256, "sweep": 0},
                                                 # no last-position sweep: every second
                                                 # in gradient-guided children, as GCG
    "featviz-raw-mixed": {**RAW_SWAPS, "lam_max": 1.0, "caps": (8.0, 10.0, 12.0, 14.0),
                          "distinct": 4, "k_grad": 256},
                                                 # four rows capped at soup-level xe (they
                                                 # take LM-guided swaps) and four lambda
                                                 # rows from 0 to 1
    "featviz-raw-halve": {**RAW_SWAPS, "distinct": 4, "k_grad": 256, "focus": (0.5,)},
                                                 # successive halving: the last half
                                                 # of the swaps on the best four rows,
                                                 # twice the children each
    "featviz-raw-halve3": {**RAW_SWAPS, "distinct": 4, "k_grad": 256,
                           "focus": (0.25, 0.5, 0.75)},   # 8, 4, 2, then 1 row (GCG's
                                                 # depth on the best basin at the end);
                                                 # = configs/raw.yaml since 47c6101
    "featviz-fluent-halve3": {"focus": (0.25, 0.5, 0.75), "focus_by": "fluent"},
                                                 # the default search, every row halving
                                                 # by its member's activation at xe <= 6.5
                                                 # (8, 4, 2, then 1 row)
    "featviz-fluent-halve3-norelax": {"focus": (0.25, 0.5, 0.75), "focus_by": "fluent",
                                      "relax_fraction": 0.0, "steps": 0},
    # fixed work, no clock (a GPU gallery's setting: step caps, every stage batched across
    # targets, the relaxation about an eighth of a target's work): the same 20 swap
    # iterations with the relaxation's 60 steps and without it; the result does not
    # depend on the machine's speed
    "featviz-fixed": {"budget_seconds": None, "steps": 60, "swap_iters": 20},
    "featviz-fixed-norelax": {"budget_seconds": None, "steps": 0, "relax_fraction": 0.0,
                              "swap_iters": 20},
    "featviz-fixed-simplex": {"budget_seconds": None, "steps": 60, "swap_iters": 20,
                              "simplex": True, "lr": 0.1},
    # fluent-probe also ran these two with `redraw: 4` (-r4: children never scored
    # before), and fluent-probe2 a definition of focus_by fluent that kept the lambda-0
    # row on (featviz-fluent-focus3, and -focus: halved once at 1/2); neither kept, see
    # benchmarks/README.md
    "epo": run_epo,
    "gcg": run_gcg,
}
SWEEP = sweep_grid()      # the baselines' tuning grid, by name ("epo-p8-c32-k512-ref", ...)


def run_one(handle, spec, method, budget, seed):
    target = featviz.parse_target(spec, handle)
    t0 = time.perf_counter()
    how = METHODS[method] if method in METHODS else SWEEP[method]
    if isinstance(how, dict):
        kw = {"budget_seconds": budget, "steps": None, "swap_iters": None, "seed": seed}
        if how.get("init") == "corpus":     # the 12 tokens ending at each top window's peak
            kw["corpus_init"] = [ids[-12:] for ids in map(handle.encode, CORPUS_TOP[spec])
                                 if len(ids) >= 12]
        cfg = DreamConfig(**{**kw, **how})
        res = dream(handle, target, cfg, progress=False)
        best = {c: (res.best if c == math.inf else res.best_at.get(c)) for c in CAPS}
        stats = {k: v for k, v in res.stats.items() if k != "soft_trace"}
        front = [[c.xe, c.activation] for c in res.frontier]     # verified, xe ascending
    else:
        fn, kw = how if isinstance(how, tuple) else (how, {})
        archive, stats = fn(handle, target, seconds=budget, seed=seed, **kw)
        tokens = Tokens(handle, [], [])
        best = {}
        for c in CAPS:
            hit = archive.best(c)
            best[c] = None if hit is None else verify_one(handle, target, tokens, hit[0], 12)
        front = sorted({(b.xe, b.activation) for b in best.values() if b is not None})
    secs = time.perf_counter() - t0
    row = {"target": spec, "method": method, "budget": budget, "seconds": secs, "stats": stats,
           "frontier": front}
    for c in CAPS:
        b = best[c]
        key = "any" if c == math.inf else f"{c:g}"
        row[f"act_{key}"] = None if b is None else b.activation
        row[f"xe_{key}"] = None if b is None else b.xe
        row[f"text_{key}"] = None if b is None else b.text
    return row


def table(rows, cmax, methods, specs):
    def fmt(v):
        return "—" if v is None else f"{v:.2f}"
    by = {(r["target"], r["method"]): r for r in rows}
    out = ["| neuron | corpus max | " + " | ".join(
        f"{m} ≤5.0 | {m} ≤6.5 | {m} any (xe)" for m in methods) + " |",
        "|---|---|" + "---|" * (3 * len(methods))]
    for s in specs:
        mx = cmax[s]
        cells = []
        for m in methods:
            r = by.get((s, m))
            if r is None:
                cells += ["", "", ""]
                continue
            ratio = lambda k: None if r[f"act_{k}"] is None else r[f"act_{k}"] / mx  # noqa: E731
            cells += [fmt(ratio("5")), fmt(ratio("6.5")),
                      f"{fmt(ratio('any'))} ({fmt(r['xe_any'])})"]
        out.append(f"| {s} | {mx:.3f} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("Ratios are activation / corpus max; 'any' shows the xe of that prompt.")
    out.append("")
    for m in methods:
        fl = [by[(s, m)]["act_6.5"] / cmax[s]
              if by.get((s, m)) and by[(s, m)]["act_6.5"] is not None
              else 0.0 for s in specs if (s, m) in by]
        if not fl:
            continue
        above = sum(f > 1 for f in fl)
        line = (f"- {m}: fluent (xe ≤ 6.5) ratio > 1 on {above}/{len(fl)}; median fluent ratio "
                f"{statistics.median(fl):.2f}")
        anyr = [by[(s, m)]["act_any"] / cmax[s] for s in specs if (s, m) in by]
        line += f"; median ratio at any fluency {statistics.median(anyr):.2f}"
        theirs = [b for b in methods if not b.startswith("featviz")]
        if m.startswith("featviz") and theirs:
            beats = 0
            for s in specs:
                r = by.get((s, m))
                base = [by[(s, b)]["act_any"] for b in theirs if (s, b) in by]
                if r and base and r["act_6.5"] is not None and r["act_6.5"] > max(base):
                    beats += 1
            line += (f"; fluent text beats every baseline at any fluency on "
                     f"{beats}/{len(specs)}")
        out.append(line)
    return "\n".join(out)


def work_lines(rows, methods, specs, seeds) -> list[str]:
    """Per method, the relaxation steps, swap iterations and candidates its runs got."""
    work, out = {}, []
    for r in rows:
        if r.get("seed", 0) in seeds and r["target"] in specs and "stats" in r:
            st = r["stats"]          # the baselines count their iterations as "iters"
            work.setdefault(r["method"], []).append(
                (st.get("relax_steps", 0), st.get("swap_iters", st.get("iters", 0)),
                 st.get("evaluated", 0), st.get("sweep_scored")))
    for m in methods:
        if work.get(m):
            steps, iters, cands, swept = zip(*work[m])
            swept = [x for x in swept if x is not None]    # recorded since 2026-12-07
            out.append(f"- {m}: per run {statistics.fmean(steps):.1f} relaxation steps "
                       f"({min(steps)}-{max(steps)}), {statistics.fmean(iters):.1f} swap "
                       f"iterations ({min(iters)}-{max(iters)}) and "
                       f"{statistics.fmean(cands):,.0f} candidates scored "
                       f"({min(cands):,}-{max(cands):,}), {len(steps)} runs"
                       + (f"; besides, the last-position sweep scored "
                          f"{statistics.fmean(swept):,.0f} last-token variants a run "
                          f"({min(swept):,}-{max(swept):,}, {len(swept)} runs recorded it; "
                          f"only its best few are archived and counted above)"
                          if swept else ""))
    return out


def seed_table(rows, cmax, methods, specs, seeds):
    """Per neuron and method, the fluent ratio (xe <= 6.5; 0 when none) as mean ± sd over
    seeds; per method the median over neurons of the means; and for each method with a
    ``-norelax`` twin the relaxation's bar: median gain and neurons where it is higher;
    per method the relaxation steps and swap iterations its runs got."""
    by = {}
    for r in rows:
        fl = 0.0 if r["act_6.5"] is None else r["act_6.5"] / cmax[r["target"]]
        by.setdefault((r["target"], r["method"]), {})[r.get("seed", 0)] = fl
    out = [f"Fluent ratio (best activation at xe ≤ 6.5 / corpus max; 0 when none), mean ± sd "
           f"(min-max) over seeds {', '.join(map(str, seeds))}.", "",
           "| neuron | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    means = {}
    for s in specs:
        cells = []
        for m in methods:
            v = [by.get((s, m), {}).get(x) for x in seeds]
            v = [x for x in v if x is not None]
            if not v:
                cells.append("")
                continue
            means[(s, m)] = statistics.fmean(v)
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{means[(s, m)]:.2f} ± {sd:.2f} ({min(v):.2f}-{max(v):.2f})"
                         + ("" if len(v) == len(seeds) else f" ({len(v)} seeds)"))
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    out.append("")
    for m in methods:
        ms = [means[(s, m)] for s in specs if (s, m) in means]
        if ms:
            strong = sum(x >= 1.5 for x in ms)
            out.append(f"- {m}: median over neurons of the seed-mean fluent ratio "
                       f"{statistics.median(ms):.2f}; ≥ 1.5 on {strong}/{len(ms)}")
    out += work_lines(rows, methods, specs, seeds)
    for m in methods:
        twin = {"featviz": "featviz-norelax", "featviz-relax": "featviz-norelax",
                "featviz-lmtopk": "featviz-norelax", "featviz-sparse": "featviz-norelax",
                "featviz-simplex": "featviz-norelax",
                "featviz-simplex-slow": "featviz-norelax",
                "featviz-jax": "featviz-jax-norelax",
                "featviz-jax-relax": "featviz-jax-norelax",
                "featviz-jax-simplex": "featviz-jax-norelax",
                "featviz-jax-simplex-short": "featviz-jax-norelax",
                "featviz-fixed-simplex": "featviz-fixed-norelax"}.get(m)
        twin = twin or (m + "-norelax" if m + "-norelax" in methods else None)
        if twin not in methods:
            continue
        both = [s for s in specs if (s, m) in means and (s, twin) in means]
        if not both:
            continue
        a = statistics.median(means[(s, m)] for s in both)
        b = statistics.median(means[(s, twin)] for s in both)
        higher = sum(means[(s, m)] > means[(s, twin)] for s in both)
        out.append(f"- relaxation bar, {m} against {twin}: median {a:.2f} vs {b:.2f} "
                   f"({(a / b - 1) * 100 if b else float('inf'):+.0f} %; bar +15 %); higher on "
                   f"{higher}/{len(both)} neurons (bar 6/8)")
    return "\n".join(out)


def front(row):
    """A row's verified (xe, activation) points: its frontier where recorded (rows since
    the frontier was stored), else its best at each xe cap."""
    if row.get("frontier"):
        return [tuple(p) for p in row["frontier"]]
    return sorted({(row[f"xe_{k}"], row[f"act_{k}"]) for k in ("5", "6.5", "any")
                   if row.get(f"act_{k}") is not None})


def sweep_pick(rows, cmax, specs):
    """The baselines' tuning (one seed): per grid configuration, over the neurons it ran
    on, the median of the fluent ratio (0 when none) and of the ratio at any fluency; the
    configurations picked: EPO's best by each median (the fluent one and the strong one),
    GCG's best by the median at any fluency (it weighs no fluency)."""
    med = {}
    for m in SWEEP:
        got = {r["target"]: r for r in rows if r["method"] == m and r["target"] in specs}
        if not got:
            continue
        fl = [0.0 if r["act_6.5"] is None else r["act_6.5"] / cmax[t] for t, r in got.items()]
        an = [r["act_any"] / cmax[t] for t, r in got.items()]
        med[m] = (len(got), statistics.median(fl), statistics.median(an))
    if not med:
        return ""
    out = ["## The baselines' tuning grid", "",
           "| configuration | neurons | median fluent ratio | median ratio at any fluency |",
           "|---|---:|---:|---:|"]
    out += [f"| {m} | {n} | {f:.2f} | {a:.2f} |" for m, (n, f, a) in med.items()]
    full = {m: v for m, v in med.items() if v[0] == len(specs)}
    out.append("")
    if len(full) < len(med):
        out.append(f"- {len(med) - len(full)} configurations have not run on every neuron "
                   "yet; the picks below are among those that have.")
    for fam, key, what in (("epo", 1, "fluent ratio"), ("epo", 2, "ratio at any fluency"),
                           ("gcg", 2, "ratio at any fluency")):
        cand = {m: v for m, v in full.items() if m.startswith(fam + "-")}
        if cand:
            best = max(cand, key=lambda m: (cand[m][key], cand[m][3 - key]))
            out.append(f"- {fam.upper()} picked by the median {what}: {best} "
                       f"({cand[best][key]:.2f})")
    return "\n".join(out)


def front_table(rows, cmax, specs, seeds, ours, baselines):
    """Bar 3.  Per neuron, the best fair baseline: of ``baselines``, the one with the
    highest seed-mean activation at any fluency, at its seed-mean xe X.  Per featviz method
    in ``ours``: the seed mean of the best verified activation on its frontier at xe <= X,
    and whether it reaches the baseline's (a seed with no frontier point at or below X
    counts as not reaching it); each seed's values in brackets.  Then the stricter
    reading seed by seed: per seed, the best baseline run at that run's xe."""
    by = {}
    for r in rows:
        if r.get("seed", 0) in seeds:
            by.setdefault((r["target"], r["method"]), []).append(r)
    for v in by.values():
        v.sort(key=lambda r: r.get("seed", 0))
    full = lambda s, m: len(by.get((s, m), [])) == len(seeds)   # noqa: E731
    out = ["## Bar 3: featviz's verified frontier against the best fair baseline", "",
           f"Seed means over seeds {', '.join(map(str, seeds))}; activations / corpus max; "
           "the baseline's per-seed range and each featviz seed in brackets.", "",
           "| neuron | best baseline | its ratio [range] (xe) | " + " | ".join(
               f"{m} at xe ≤ baseline's" for m in ours) + " |",
           "|---|---|---|" + "---|" * len(ours)]
    reached = {m: 0 for m in ours}
    either = 0
    n = 0
    for s in specs:
        bl = [b for b in baselines if full(s, b)]
        if not bl:
            continue
        mean = {b: (statistics.fmean(r["act_any"] for r in by[(s, b)]),
                    statistics.fmean(r["xe_any"] for r in by[(s, b)])) for b in bl}
        b = max(bl, key=lambda b: mean[b][0])
        A, X = mean[b]
        n += 1
        cells, hit = [], False
        for m in ours:
            if not full(s, m):
                cells.append("")
                continue
            best = [max((a for x, a in front(r) if x <= X), default=None) for r in by[(s, m)]]
            if any(v is None for v in best):
                cells.append("— (no point at that xe in some seed)")
                continue
            v = statistics.fmean(best)
            ok = v >= A
            reached[m] += ok
            hit |= ok
            each = " ".join(f"{x / cmax[s]:.2f}" for x in best)
            cells.append(f"{v / cmax[s]:.2f} [{each}] {'✓' if ok else '✗'}")
        either += hit
        span = [r["act_any"] / cmax[s] for r in by[(s, b)]]
        out.append(f"| {s} | {b} | {A / cmax[s]:.2f} [{min(span):.2f}-{max(span):.2f}] "
                   f"({X:.1f}) | " + " | ".join(cells) + " |")
    out.append("")
    for m in ours:
        out.append(f"- {m} reaches the best fair baseline on {reached[m]}/{n} neurons "
                   "(bar 7/8)")
    if len(ours) > 1:
        out.append(f"- any of these featviz methods (each run at the same budget, not their "
                   f"union's): {either}/{n}")
    for m in ours:
        per_seed = []
        for i, seed in enumerate(seeds):
            hits, missed = 0, []
            for s in specs:
                bl = [b for b in baselines if full(s, b)]
                if not bl or not full(s, m):
                    continue
                top = max((by[(s, b)][i] for b in bl), key=lambda r: r["act_any"])
                got = max((a for x, a in front(by[(s, m)][i]) if x <= top["xe_any"]),
                          default=None)
                if got is not None and got >= top["act_any"]:
                    hits += 1
                else:
                    missed.append(s)
            per_seed.append(f"seed {seed}: {hits}/{n}" + (f" (misses {', '.join(missed)})"
                                                         if missed else ""))
        out.append(f"- {m}, seed by seed against that seed's best baseline run at its xe: "
                   + "; ".join(per_seed))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=90.0)
    ap.add_argument("--methods", default="featviz,epo,gcg")
    ap.add_argument("--neurons", default=DEV)
    ap.add_argument("--only", default=None, help="comma-separated subset of targets")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (overrides --seed)")
    ap.add_argument("--tag", default="cpu")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the tables from the tag's jsonl without running anything")
    ap.add_argument("--corpus-max", default=os.path.join(HERE, "results", "corpus_max_200000.json"))
    ap.add_argument("--import-rows", action="append", default=[], metavar="JSONL[:NAME]",
                    help="append another tag's or tree's rows of these seeds and neurons to "
                         "this tag (e.g. the code before a change, run from a worktree of its "
                         "commit), with NAME as their method name; repeatable")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    specs = json.load(open(args.neurons))["targets"]
    if args.only:
        specs = [s for s in specs if s in args.only.split(",")]
    methods = args.methods.split(",")
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    for m in methods:
        if m not in METHODS and m not in SWEEP:
            sys.exit(f"unknown method {m}; choose from {', '.join(METHODS)} or the baselines' "
                     f"grid ({', '.join(SWEEP)})")
    if not os.path.exists(args.corpus_max):
        sys.exit(f"{args.corpus_max} is missing; run python benchmarks/corpus_max.py first")
    found = json.load(open(args.corpus_max))["targets"]
    cmax = {k: v["max"] for k, v in found.items()}
    CORPUS_TOP.update({k: v["top_texts"] for k, v in found.items()})
    jl = os.path.join(HERE, "results", f"dream_quality_{args.tag}.jsonl")
    rows = [json.loads(x) for x in open(jl)] if os.path.exists(jl) else []
    done = {(r["target"], r["method"], r["budget"], r.get("seed", 0)) for r in rows}
    for spec in args.import_rows:
        src, name = spec.rsplit(":", 1) if ":" in spec else (spec, None)
        if not os.path.exists(src) or (name is not None and not name.startswith("featviz-")):
            sys.exit(f"--import-rows {spec}: give an existing jsonl, and a featviz-... name")
        for r in map(json.loads, open(src)):
            r = {**r, "method": name or r["method"]}
            key = (r["target"], r["method"], r["budget"], r.get("seed", 0))
            if key not in done and key[3] in seeds and key[0] in specs:
                done.add(key)
                rows.append(r)
                with open(jl, "a") as f:
                    f.write(json.dumps(r) + "\n")
    if not args.report_only:
        handle = featviz.load_model()
        featviz.model.vocab.readable_mask(handle)
    for seed in [] if args.report_only else seeds:
        for s in specs:
            for m in methods:
                if (s, m, args.budget, seed) in done:
                    continue
                row = run_one(handle, s, m, args.budget, seed)
                row["seed"] = seed
                row["ratio_6.5"] = None if row["act_6.5"] is None else row["act_6.5"] / cmax[s]
                rows.append(row)
                with open(jl, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"seed {seed} {s} {m}: ≤6.5 {row['act_6.5']} any {row['act_any']} "
                      f"(xe {row['xe_any']}) / max {cmax[s]:.3f}", flush=True)
    # the tables cover this budget, and the seeds asked for (all the tag's when not given:
    # a probe's incomplete last seed can be left out of its tables with --seeds)
    rows = [r for r in rows if r["budget"] == args.budget
            and (args.seeds is None or r.get("seed", 0) in seeds)]
    all_methods = [m for m in list(METHODS) + list(SWEEP) if any(r["method"] == m for r in rows)]
    # rows another commit's tree recorded under a name of their own (an A/B against the
    # code before a change: `--import-rows`) come after
    all_methods += [m for m in dict.fromkeys(r["method"] for r in rows) if m not in all_methods]
    all_seeds = sorted({r.get("seed", 0) for r in rows})
    fixed = [m for m in all_methods if isinstance(METHODS.get(m), dict)
             and "budget_seconds" in METHODS[m] and METHODS[m]["budget_seconds"] is None]
    title = (f"# Dream quality, {args.budget:g} s per neuron (embedded SmolLM2-135M, 2 CPU "
             f"cores)\n\n" if not fixed else
             f"# Dream quality at fixed work (embedded SmolLM2-135M, 2 CPU cores): "
             f"{', '.join(fixed)} run set step counts, no clock\n\n")
    if len(all_seeds) > 1:
        md = title + seed_table(rows, cmax, all_methods, specs, all_seeds) + "\n"
    else:
        md = (title + table(rows, cmax, all_methods, specs) + "\n\n"
              + "\n".join(work_lines(rows, all_methods, specs, all_seeds)) + "\n")
    ours = [m for m in all_methods if m.startswith("featviz")]
    theirs = [m for m in all_methods if not m.startswith("featviz")]
    if ours and theirs:
        md += "\n" + front_table(rows, cmax, specs, all_seeds, ours, theirs) + "\n"
    if sum(m in SWEEP for m in all_methods) == len(SWEEP) and len(all_seeds) == 1:
        # the sweep's own tag (every grid configuration), not a comparison of its picks
        md += "\n" + sweep_pick(rows, cmax, specs) + "\n"
    with open(os.path.join(HERE, "results", f"dream_quality_{args.tag}.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()

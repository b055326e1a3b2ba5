"""`featviz query`: the single-neuron question, answered in the terminal or as JSON."""
from __future__ import annotations

import json

from featviz.errors import FeatvizError


def add_query_parser(sub, common):
    q = sub.add_parser("query", help="find text that drives one target, beside corpus exemplars")
    common(q)
    q.add_argument("--target", help="e.g. mlp:12:345")
    q.add_argument("--config", help="YAML preset (see configs/); flags override it")
    q.add_argument("--length", type=int)
    q.add_argument("--steps", type=int, help="relaxation steps (a cap when a budget is set)")
    q.add_argument("--swap-iters", dest="swap_iters", type=int)
    q.add_argument("--batch", type=int)
    q.add_argument("--seed", type=int)
    q.add_argument("--xe-cap", dest="xe_cap", type=float)
    q.add_argument("--budget-seconds", dest="budget_seconds", type=float)
    q.add_argument("--init", choices=["model", "random", "corpus"],
                   help="start from model samples (default), random tokens, or the top "
                        "exemplars of this query's corpus scan (a warm start)")
    q.add_argument("--backend", choices=["auto", "jax", "torch"],
                   help="relaxation backend (default torch; auto = JAX where supported)")
    q.add_argument("--prefix")
    q.add_argument("--suffix")
    q.add_argument("--corpus", help="wiki (default), .txt/.jsonl file or folder, hf:NAME")
    q.add_argument("--corpus-tokens", dest="corpus_tokens", type=int)
    q.add_argument("--top-k", dest="top_k", type=int)
    q.add_argument("--json", action="store_true", help="print JSON instead of tables")
    q.add_argument("--out", help="also write the JSON result to this file")
    q.set_defaults(func=cmd_query)


def _short(s: str, n: int = 70) -> str:
    s = json.dumps(s, ensure_ascii=False)
    return s if len(s) <= n else s[: n - 3] + '..."'


def cmd_query(args) -> int:
    from featviz.analysis.query import query
    from featviz.config import load_config
    from featviz.fileio import dump_json, write_atomic
    from featviz.model.loading import load_model
    from featviz.targets.spec import parse_target, parse_targets
    keys = ["length", "steps", "swap_iters", "batch", "seed", "xe_cap", "budget_seconds", "init",
            "prefix", "suffix", "corpus", "corpus_tokens", "top_k", "backend"]
    cfg = load_config(args.config, {k: getattr(args, k) for k in keys})
    spec = args.target
    if spec is None and args.config:
        import yaml
        spec = (yaml.safe_load(open(args.config, encoding="utf-8")) or {}).get("target")
    if not spec:
        raise FeatvizError("give a target, e.g. --target mlp:12:345")
    parse_targets(spec)                      # syntax first, before any model work
    handle = load_model(args.model, trust_remote_code=args.trust_remote_code, device=args.device)
    target = parse_target(spec, handle)
    res = query(handle, target, cfg)
    doc = res.to_json(handle)
    if args.out:
        write_atomic(args.out, dump_json(doc))
    if args.json:
        print(dump_json(doc))
        return 0
    d = res.dream
    print(f"# {d.target}: {d.target_description}")
    print(f"# model {handle.name}; {d.stats['evaluated']} sequences scored exactly in "
          f"{d.stats['seconds']['total']:.1f} s")
    print("\nactivation-vs-fluency frontier (xe in nats/token; lower is more natural):")
    print(f"{'activation':>11} {'xe':>6}  text")
    for c in d.frontier:
        print(f"{c.activation:11.4f} {c.xe:6.2f}  {_short(c.text)}")
    cap = cfg.dream.xe_cap
    if d.best_fluent:
        print(f"\nbest fluent (xe <= {cap:g}): {d.best_fluent.activation:.4f} at xe "
              f"{d.best_fluent.xe:.2f}  {_short(d.best_fluent.text, 90)}")
    else:
        print(f"\nno candidate reached xe <= {cap:g}")
    if res.exemplars is not None:
        ex = res.exemplars
        print(f"\ntop corpus exemplars ({ex.n_tokens} tokens scanned, max {ex.max:.4f}):")
        for e in ex.top:
            ctx = handle.decode(e.token_ids[max(1, e.peak - 12): e.peak])
            peak = handle.decode([e.token_ids[e.peak]])
            print(f"{e.value:11.4f}  ...{_short(ctx, 60)} [[{peak}]]")
        ref = res.reference
        if ref is not None and ref.value is None:
            print(f"\nratio synthetic/corpus: unavailable ({ref.basis})")
        elif ref is not None:
            f = lambda r: "n/a" if r is None else f"{r:.2f}"  # noqa: E731
            print(f"\nratio synthetic/corpus {ref.value:.4f} ({ref.basis}): fluent "
                  f"{f(res.ratio_fluent)}, any fluency {f(res.ratio_best)}")
    if args.out:
        print(f"\nJSON written to {args.out}")
    return 0

"""`featviz audit`: checks for and against what a feature seems to mean."""
from __future__ import annotations

from dataclasses import fields

from featviz.cli.common import add_dream_budget_args
from featviz.errors import FeatvizError


def add_audit_parser(sub, common):
    a = sub.add_parser("audit", help="evidence for and against what targets seem to mean")
    common(a)
    a.add_argument("--target", action="append", required=True,
                   help="e.g. mlp:3:17 (repeatable; ranges expand)")
    a.add_argument("--corpus", help="wiki (default), .txt/.jsonl file or folder, hf:NAME")
    a.add_argument("--tokens", type=int, default=20_000, help="corpus tokens to mine")
    a.add_argument("--window", type=int, default=63, help="tokens per corpus window (after BOS)")
    add_dream_budget_args(a, 30.0)
    a.add_argument("--seed", type=int, help="random seed (default: the preset's, else 0)")
    a.add_argument("--cache-dir", dest="cache_dir",
                   help="mining cache (default ~/.cache/featviz/mining; '' turns it off)")
    a.add_argument("--threshold", action="append", default=[], metavar="NAME=VALUE",
                   help="override a flag threshold, e.g. superstimulus=5 (repeatable)")
    a.add_argument("--json", action="store_true", help="print JSON instead of the table")
    a.add_argument("--out", help="also write the JSON report to this file")
    a.add_argument("--gallery", help="embed the audit into this existing gallery folder")
    a.set_defaults(func=cmd_audit)


def parse_thresholds(items: list):
    from featviz.analysis.flags import Thresholds
    names = {f.name for f in fields(Thresholds)}
    kw = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in names:
            raise FeatvizError(f"--threshold '{item}' must be NAME=VALUE with NAME one of "
                               f"{', '.join(sorted(names))}")
        try:
            kw[name] = float(value)
        except ValueError:
            raise FeatvizError(f"--threshold '{item}': '{value}' is not a number") from None
    return Thresholds(**kw)


def cmd_audit(args) -> int:
    import os

    from featviz.analysis.audit import AuditConfig, audit, format_report
    from featviz.cli.common import budget_dream_config
    from featviz.fileio import dump_json, write_atomic
    from featviz.mining.miner import MineConfig
    from featviz.model.loading import load_model
    from featviz.targets.spec import parse_targets
    for s in args.target:
        parse_targets(s)                          # syntax first, before any model work
    th = parse_thresholds(args.threshold)
    if args.gallery and not os.path.isfile(os.path.join(args.gallery, "gallery.json")):
        raise FeatvizError(f"--gallery '{args.gallery}' is not a gallery folder (no gallery.json); "
                           "build it first with featviz gallery")
    dream = budget_dream_config(args)
    mine = MineConfig(window=args.window, max_tokens=args.tokens, seed=dream.seed).check()
    cfg = AuditConfig(mine=mine, dream=dream, corpus=args.corpus, cache_dir=args.cache_dir,
                      thresholds=th, seed=dream.seed).check()
    handle = load_model(args.model, trust_remote_code=args.trust_remote_code, device=args.device)
    targets = [t for s in args.target for t in parse_targets(s, handle)]
    try:
        report = audit(handle, targets, cfg)
    except KeyboardInterrupt:
        from featviz.errors import Interrupted
        raise Interrupted("interrupted before the report was written; re-run the same command "
                          "(the corpus mining is cached, so it resumes faster)") from None
    doc = report.to_json()
    if args.out:
        write_atomic(args.out, dump_json(doc))
    if args.gallery:
        from featviz.site.gallery import attach_audit
        found = attach_audit(args.gallery, [t.to_json() for t in report.targets])
        missing = [str(t) for t in targets if str(t) not in found]
        if missing:
            print(f"featviz: not in the gallery, so not embedded: {', '.join(missing)}")
    if args.json:
        print(dump_json(doc))
    else:
        print(format_report(report))
        if args.out:
            print(f"JSON written to {args.out}")
        if args.gallery:
            print(os.path.join(args.gallery, "index.html"))
    return 0

"""`featviz compare`: how targets change between two checkpoints, and which targets a task
corpus uses; a table in the terminal, JSON, and optionally comparison pages."""
from __future__ import annotations

from featviz.cli.common import add_dream_budget_args, budget_dream_config
from featviz.errors import FeatvizError


def add_compare_parser(sub, common):
    c = sub.add_parser("compare", help="how targets change between two checkpoints (drift), "
                                       "and which ones a task corpus uses (relevance)")
    common(c)
    c.add_argument("--against", help="model B: the other checkpoint (HF id, dir or .gguf)")
    c.add_argument("--targets", nargs="+", action="extend", required=True,
                   help="e.g. mlp:6:0-63 head:8:3 (ranges expand)")
    c.add_argument("--corpus", help="general corpus: wiki (default), .txt/.jsonl file or folder")
    c.add_argument("--task-corpus", dest="task_corpus",
                   help="a task's text (.txt/.jsonl file or folder): each target's relevance to it")
    c.add_argument("--tokens", type=int, default=20_000, help="tokens mined from each corpus")
    c.add_argument("--window", type=int, default=63, help="tokens per corpus window (after BOS)")
    c.add_argument("--top-k", dest="top_k", type=int, default=20)
    add_dream_budget_args(c, 20.0)
    c.add_argument("--no-dream", action="store_true",
                   help="corpus figures only (no synthetic texts, no transfer)")
    c.add_argument("--dream-top", dest="dream_top", type=int,
                   help="dream only the N targets ranked highest by the corpus figures")
    c.add_argument("--dream-group", dest="dream_group", type=int, default=None,
                   help="targets dreamt together, every stage batched across them (default: "
                        "as many as fit on a GPU, 1 on a CPU)")
    c.add_argument("--seed", type=int, help="random seed (default: the preset's, else 0)")
    c.add_argument("--cache-dir", dest="cache_dir",
                   help="mining cache (default ~/.cache/featviz/mining; '' turns it off)")
    c.add_argument("--json", action="store_true", help="print JSON instead of the table")
    c.add_argument("--out", help="also write the JSON to this file")
    c.add_argument("--gallery", help="write comparison pages (index.html + one per target) here")
    c.set_defaults(func=cmd_compare)


def _check_corpus(source: str | None, flag: str) -> None:
    """A missing or empty corpus is refused before any model is loaded."""
    from featviz.mining.corpus import documents
    if source is None or source == "wiki" or source.startswith("hf:"):
        return
    if next(documents(source), None) is None:
        raise FeatvizError(f"{flag} '{source}' holds no text; pass a corpus with text in it")


def cmd_compare(args) -> int:
    import os

    from featviz.analysis.compare import CompareConfig, compare
    from featviz.analysis.compare.report import table
    from featviz.fileio import dump_json, write_atomic
    from featviz.mining.miner import MineConfig
    from featviz.model.loading import load_model
    from featviz.site.compare import write_comparison_site
    from featviz.targets.spec import parse_targets
    for s in args.targets:
        parse_targets(s)                       # syntax first, before any model work
    if args.against is None and not args.task_corpus:
        raise FeatvizError("nothing to compare: give --against B (a second checkpoint) or "
                           "--task-corpus T")
    if args.out and os.path.isdir(args.out):
        raise FeatvizError(f"--out '{args.out}' is a folder; give a file path for the JSON")
    if args.gallery and os.path.exists(args.gallery) and not os.path.isdir(args.gallery):
        raise FeatvizError(f"--gallery '{args.gallery}' is a file; give a folder for the pages")
    if args.against:                            # widths from config.json, before any weights
        from featviz.analysis.compare import check_comparable
        from featviz.model.loading import peek_shape
        shapes = peek_shape(args.model), peek_shape(args.against)
        if all(shapes):
            check_comparable(*shapes)
    _check_corpus(args.corpus, "--corpus")
    _check_corpus(args.task_corpus, "--task-corpus")
    dream = None if args.no_dream else budget_dream_config(args)
    mine = MineConfig(window=args.window, max_tokens=args.tokens, k=args.top_k,
                      seed=dream.seed if dream is not None else (args.seed or 0)).check()
    cfg = CompareConfig(mine=mine, dream=dream, dream_top=args.dream_top, corpus=args.corpus,
                        task_corpus=args.task_corpus, cache_dir=args.cache_dir,
                        dream_group=args.dream_group).check()
    load = lambda spec: load_model(spec, trust_remote_code=args.trust_remote_code,  # noqa: E731
                                   device=args.device)
    a = load(args.model)
    b = load(args.against) if args.against else None
    res = compare(a, args.targets, cfg, against=b)
    doc = res.to_json()
    if args.out:
        write_atomic(args.out, dump_json(doc))
    if args.gallery:
        index = write_comparison_site(doc, args.gallery)
    if args.json:
        print(dump_json(doc))
        return 0
    print(f"# A: {res.models[0]['name']}" + (f"   B: {res.models[1]['name']}" if b else ""))
    print(table(res))
    if args.out:
        print(f"JSON written to {args.out}")
    if args.gallery:
        print(index)
    return 0

"""`featviz gallery`: mine, dream and write a static gallery for many targets."""
from __future__ import annotations

import re

from featviz.cli.common import add_dream_budget_args, budget_dream_config
from featviz.errors import FeatvizError, Interrupted


def add_gallery_parser(sub, common):
    g = sub.add_parser("gallery", help="a static HTML + JSON gallery for many targets")
    common(g)
    g.add_argument("--targets", action="append",
                   help="e.g. mlp:6:0-63 (repeatable; ranges expand)")
    g.add_argument("--layers", help="comma-separated layers; each --targets spec is repeated "
                                    "at each of them (e.g. --targets mlp:0:0-15 --layers 2,6,10)")
    g.add_argument("--corpus", help="wiki (default), .txt/.jsonl file or folder, hf:NAME")
    g.add_argument("--tokens", type=int, default=20_000, help="corpus tokens to mine")
    g.add_argument("--window", type=int, default=63, help="tokens per corpus window (after BOS)")
    g.add_argument("--top-k", dest="top_k", type=int, default=20)
    g.add_argument("--include-bos", action="store_true", help="mine the BOS position too")
    add_dream_budget_args(g, 20.0)
    g.add_argument("--no-dream", action="store_true", help="corpus exemplars only")
    g.add_argument("--dream-group", dest="dream_group", type=int, default=None,
                   help="targets dreamt together, every stage batched across them (default: "
                        "on a GPU as many as fit in memory, 1 on a CPU, where a pass over more "
                        "rows costs as much as separate passes)")
    g.add_argument("--seed", type=int, help="random seed (default: the preset's, else 0)")
    g.add_argument("--cache-dir", dest="cache_dir",
                   help="mining cache (default ~/.cache/featviz/mining; '' turns it off)")
    g.add_argument("--shard", help="i/N: compute only every N-th target from the i-th, into the "
                                   "shared --out folder (Slurm or job arrays; the last shard to "
                                   "finish, or --merge, writes the index)")
    g.add_argument("--merge", metavar="DIR",
                   help="write the index, manifest and gallery.jsonl of DIR from its finished "
                        "target records (after shard runs); nothing else is computed")
    g.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS",
                   help="run on a Ray cluster: HOST:PORT of a running one, or no address / "
                        "auto for a local one (pip install 'featviz[ray]')")
    g.add_argument("--ray-workers", dest="ray_workers", type=int,
                   help="Ray actors, each with the model loaded once (default: one per GPU, "
                        "else one per CPU)")
    g.add_argument("--title", default="featviz gallery")
    g.add_argument("--out", default="galleries/gallery", help="output folder")
    g.set_defaults(func=cmd_gallery)


def expand_specs(specs: list, layers: str | None) -> list[str]:
    if not layers:
        return list(specs)
    if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", layers.replace(" ", "")):
        raise FeatvizError(f"--layers '{layers}' must be comma-separated layers, e.g. 2,6,10 or 0-3")
    ls: list[int] = []
    for part in layers.replace(" ", "").split(","):
        a, _, b = part.partition("-")
        ls += list(range(int(a), int(b or a) + 1))
    out = []
    for spec in specs:
        m = re.fullmatch(r"(\w+):(-?\d+):(.+)", spec.strip())
        if not m:
            raise FeatvizError(f"--layers needs targets written KIND:LAYER:..., got '{spec}'")
        out += [f"{m.group(1)}:{layer}:{m.group(3)}" for layer in ls]
    return out


def cmd_merge(out_dir: str) -> int:
    import os

    from featviz.site.gallery import finish_gallery
    if not os.path.isdir(out_dir):
        raise FeatvizError(f"--merge '{out_dir}' is not a folder; pass the gallery folder the "
                           "shard runs wrote")
    res = finish_gallery(out_dir)
    if res.pending:
        raise FeatvizError(f"{len(res.pending)} of {len(res.pending) + len(res.skipped)} targets "
                           f"have no record yet (first: {res.pending[0]}); run the missing "
                           "shards, then --merge again (the index shows them as pending)")
    print(f"{len(res.skipped)} targets merged" +
          (f", {len(res.failed)} with problems: {', '.join(res.failed)}" if res.failed else ""))
    print(res.index)
    return 0


def cmd_gallery(args) -> int:
    from featviz.mining.miner import MineConfig
    from featviz.model.loading import load_model
    from featviz.site.gallery import GalleryConfig, build_gallery
    from featviz.site.runs import parse_shard
    from featviz.targets.spec import parse_targets
    if args.merge:
        return cmd_merge(args.merge)
    if not args.targets:
        raise FeatvizError("give the targets, e.g. --targets mlp:6:0-63 (or --merge DIR)")
    parse_shard(args.shard)
    if args.ray is not None:
        from featviz.site.cluster import check_address, require_ray
        require_ray()                          # installed and reachable, before any model work
        check_address(args.ray)
    specs = expand_specs(args.targets, args.layers)
    for s in specs:
        parse_targets(s)                       # syntax first, before any model work
    dream = None if args.no_dream else budget_dream_config(args)
    seed = dream.seed if dream is not None else (args.seed or 0)
    mine = MineConfig(window=args.window, max_tokens=args.tokens, k=args.top_k,
                      include_bos=args.include_bos, seed=seed).check()
    cfg = GalleryConfig(mine=mine, dream=dream, corpus=args.corpus, cache_dir=args.cache_dir,
                        title=args.title, dream_group=args.dream_group, shard=args.shard,
                        ray=args.ray, ray_workers=args.ray_workers).check()
    handle = load_model(args.model, trust_remote_code=args.trust_remote_code, device=args.device)
    targets = [t for s in specs for t in parse_targets(s, handle)]
    try:
        res = build_gallery(handle, targets, cfg, out_dir=args.out)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted; finished targets are saved in {args.out}. Re-run the same command "
            "to resume") from None
    print(f"{len(res.done)} targets computed, {len(res.skipped)} already done"
          + (f", {len(res.failed)} with problems: {', '.join(res.failed)}" if res.failed else "")
          + (f"; {len(res.pending)} left to other shards (then `featviz gallery --merge "
             f"{args.out}`)" if res.pending else ""))
    print(res.index)
    return 0

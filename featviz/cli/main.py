"""Command line: a thin layer over the Python API.

Every user mistake ends in one line on stderr and exit code 2, with no traceback.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

from featviz.errors import FeatvizError
from featviz.fileio import dump_json


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        raise FeatvizError(f"{message} (see `{self.prog} --help`)")


def _fmt(v) -> str:
    return "nan" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"


def cmd_activations(args) -> int:
    from featviz.model.loading import load_model
    from featviz.targets.read import read_text
    from featviz.targets.spec import parse_target
    if not args.text:
        raise FeatvizError("give the text to read, e.g. featviz activations --target mlp:12:345 \"some text\"")
    from featviz.targets.spec import parse_targets
    for spec in args.target:  # parse before loading anything
        parse_targets(spec)
    handle = load_model(args.model, trust_remote_code=args.trust_remote_code, device=args.device)
    targets = [parse_target(s, handle) for s in args.target]
    readings = [read_text(handle, targets, text) for text in args.text]
    if args.json:
        doc = {"model": handle.describe(),
               "targets": [{"name": str(t), "description": t.describe(handle)} for t in targets],
               "texts": [r.to_json() for r in readings]}
        print(dump_json(doc))
        return 0
    for t in targets:
        print(f"# {t}: {t.describe(handle)}")
    for r in readings:
        names = list(r.values)
        print("pos  token" + " " * 15 + "  ".join(f"{n:>14}" for n in names))
        for i, tok in enumerate(r.tokens):
            vals = "  ".join(f"{_fmt(r.values[n][i]):>14}" for n in names)
            print(f"{i:>3}  {json.dumps(tok, ensure_ascii=False)[:20]:<20}{vals}")
        for n in names:
            print(f"reduced {n} = {_fmt(r.reduced[n])}")
        if r.xe is not None:
            print(f"xe = {r.xe:.3f} nats/token")
        print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="featviz", description="What makes a neuron or attention head fire.")
    sub = p.add_subparsers(dest="cmd", parser_class=_Parser)

    def common(sp):
        sp.add_argument("--model", default=None, help="smollm2-135m (default), HF id, dir or .gguf")
        sp.add_argument("--trust-remote-code", action="store_true",
                        help="allow a model's own Python code to run (off by default)")
        sp.add_argument("--device", default="auto",
                        help="cpu, cuda, cuda:N, mps or auto (default: a GPU when there is one); "
                             "mining, dreaming, audit and verification all run there")

    a = sub.add_parser("activations", help="per-token values of targets on some text")
    common(a)
    a.add_argument("--target", action="append", required=True, help="e.g. mlp:12:345 (repeatable)")
    a.add_argument("--json", action="store_true")
    a.add_argument("text", nargs="*")
    a.set_defaults(func=cmd_activations)

    from featviz.cli.query import add_query_parser
    add_query_parser(sub, common)
    from featviz.cli.gallery import add_gallery_parser
    add_gallery_parser(sub, common)
    from featviz.cli.audit import add_audit_parser
    add_audit_parser(sub, common)
    from featviz.cli.compare import add_compare_parser
    add_compare_parser(sub, common)
    from featviz.cli.export import add_export_parser
    add_export_parser(sub, common)
    return p


def _glue_negative_targets(argv: list) -> list:
    """``--target -mlp:3:5`` (a minimised target) would read as an unknown flag: glue it
    to its option (``--target=-mlp:3:5``), as argparse needs."""
    out = []
    for a in argv:
        if out and out[-1] in ("--target", "--targets") and a.startswith("-") \
                and not a.startswith("--") and ":" in a:
            out[-1] = f"{out[-1]}={a}"
        else:
            out.append(a)
    return out


def main(argv=None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(_glue_negative_targets(sys.argv[1:] if argv is None else argv))
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return args.func(args)
    except FeatvizError as e:
        _close_bars()
        print(f"featviz: {'error: ' if e.exit_code == 2 else ''}{e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        _close_bars()
        print("featviz: interrupted", file=sys.stderr)
        return 130


def _close_bars() -> None:
    """Close progress bars an interrupted run left open, so the message is the last line."""
    from tqdm.auto import tqdm
    for bar in list(getattr(tqdm, "_instances", [])):
        bar.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

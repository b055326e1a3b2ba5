"""Golden outputs: the JSON a fixed set of commands writes with fixed step counts and seeds,
timing fields removed.  Recorded before a refactor, checked after it: the same commands
must write the same JSON.

Run:  python benchmarks/golden.py record   (writes benchmarks/golden/*.json)
      python benchmarks/golden.py check    (exit 1 and a diff summary when any differs)

The figures' last bits depend on the machine's float arithmetic (the same code on two
CPUs of this pool differed at 1e-9), so record and check on one machine, the recording
from the code before the change.

Commands: ``featviz query --json`` on two tiny-model targets and one embedded-model
target, a tiny-model gallery (``gallery.jsonl``), one ``featviz audit --json``.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

GOLDEN = os.path.join(HERE, "golden")
TIMING = ("seconds", "wall", "elapsed", "time", "row_seconds", "created", "last_iter_fraction")
FIXED = ["--steps", "20", "--swap-iters", "3", "--seed", "0"]


def strip(x):
    """The document without timing fields (any key naming a time)."""
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items()
                if not any(t in k.lower() for t in TIMING)}
    if isinstance(x, list):
        return [strip(v) for v in x]
    return x


def cli(argv) -> str:
    from featviz.cli.main import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(argv)
    if rc != 0:
        raise SystemExit(f"featviz {' '.join(argv)} exited {rc}")
    return out.getvalue()


def tiny_setup(work: str):
    import numpy as np
    from conftest import TEXT, make_tokenizer, tiny_llama
    d = os.path.join(work, "tiny-model")
    tok = make_tokenizer()
    tiny_llama(tok, seed=5).save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    rng = np.random.default_rng(0)
    words = TEXT.split()
    corpus = os.path.join(work, "corpus.txt")
    with open(corpus, "w") as fh:
        fh.write("\n\n".join(" ".join(rng.choice(words, size=40)) for _ in range(60)))
    return d, corpus


def outputs() -> dict:
    docs = {}
    work = os.path.join(tempfile.gettempdir(), "featviz-golden")   # a fixed path: it is in
    shutil.rmtree(work, ignore_errors=True)                          # the JSON (model names)
    os.makedirs(work)
    try:
        model, corpus = tiny_setup(work)
        for root, _, names in os.walk(work):      # mtimes enter the gallery's settings key
            for name in names:
                os.utime(os.path.join(root, name), (1_700_000_000, 1_700_000_000))
        tiny = ["--model", model, "--device", "cpu", "--corpus", corpus]
        for t in ("mlp:1:3", "attn:2:1:2@max"):
            docs[f"query_tiny_{t}"] = json.loads(cli(
                ["query", "--target", t, *tiny, "--corpus-tokens", "600", "--json", *FIXED]))
        docs["query_embedded_mlp:6:308"] = json.loads(cli(
            ["query", "--target", "mlp:6:308", "--device", "cpu", "--corpus-tokens", "2000",
             "--json", *FIXED]))
        g = os.path.join(work, "g")
        cli(["gallery", "--targets", "mlp:1:0-3", *tiny, "--tokens", "600", "--cache-dir", "",
             "--out", g, *FIXED])
        with open(os.path.join(g, "gallery.jsonl")) as fh:
            docs["gallery_tiny"] = [json.loads(line) for line in fh if line.strip()]
        docs["audit_tiny"] = json.loads(cli(
            ["audit", "--target", "mlp:1:3", *tiny, "--tokens", "600", "--cache-dir", "",
             "--json", *FIXED]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {k: strip(v) for k, v in docs.items()}


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "check"
    docs = outputs()
    if mode == "record":
        os.makedirs(GOLDEN, exist_ok=True)
        for k, v in docs.items():
            with open(os.path.join(GOLDEN, k.replace(":", "_") + ".json"), "w") as fh:
                json.dump(v, fh, indent=1, sort_keys=True)
                fh.write("\n")
        print(f"recorded {len(docs)} golden outputs in {GOLDEN}")
        return 0
    bad = []
    for k, v in docs.items():
        with open(os.path.join(GOLDEN, k.replace(":", "_") + ".json")) as fh:
            if json.load(fh) != json.loads(json.dumps(v)):
                bad.append(k)
                got = os.path.join(tempfile.gettempdir(), "featviz-golden-got")
                os.makedirs(got, exist_ok=True)
                with open(os.path.join(got, k.replace(":", "_") + ".json"), "w") as out:
                    json.dump(v, out, indent=1, sort_keys=True)
                    out.write("\n")
    print("all golden outputs match" if not bad else
          f"differ: {', '.join(bad)} (this run's are in {tempfile.gettempdir()}/featviz-golden-got)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

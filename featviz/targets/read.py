"""Exact readings of text and token ids: the values featviz reports come from here."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from featviz.errors import FeatvizError
from featviz.model.forward import run, with_bos, xe_from_logits
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


def evaluate_ids(handle, targets: list[Target], ids, *, with_xe: bool = False,
                 batch_size: int = 64):
    """Exact values of ``targets`` on hard token ids (batch, n) *without* BOS.

    Returns (values (n_targets, batch) tensor, xe (batch,) tensor or None).
    """
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.dim() == 1:
        ids = ids[None]
    sites = all_sites(targets)
    vals, xes = [], []
    with torch.no_grad():
        for i in range(0, ids.shape[0], batch_size):
            full = with_bos(handle, ids[i:i + batch_size])
            caps, logits = run(handle, sites, input_ids=full, need_logits=with_xe)
            vals.append(torch.stack([t.evaluate(caps, handle) for t in targets]))
            if with_xe:
                xes.append(xe_from_logits(logits, full))
    return torch.cat(vals, dim=1), (torch.cat(xes) if with_xe else None)


def read_text(handle, targets: list[Target], text: str, *, with_xe: bool = True) -> Reading:
    """Values of several targets at every token of ``text`` (BOS + its tokens), in one pass."""
    ids = handle.encode(text)
    if not ids:
        raise FeatvizError("the text is empty after tokenization; pass some text")
    return read_ids(handle, targets, [handle.bos_id] + ids, with_xe=with_xe)


def read_ids(handle, targets: list[Target], ids: list, *, with_xe: bool = False) -> Reading:
    """Values of several targets at every position of ``ids`` (which start with BOS)."""
    full = torch.as_tensor([list(ids)], dtype=torch.long, device=handle.device)
    with torch.no_grad():
        caps, logits = run(handle, all_sites(targets), input_ids=full, need_logits=with_xe)
        per = {str(t): t.per_position(caps, handle)[0].tolist() for t in targets}
        red = {str(t): float(t.evaluate(caps, handle)[0]) for t in targets}
        xe = float(xe_from_logits(logits, full)[0]) if with_xe and full.shape[1] > 1 else None
    return Reading(tokens=handle.token_strings(full[0].tolist()), token_ids=full[0].tolist(),
                   values=per, reduced=red, xe=xe)

"""The population: one row per lambda or xe cap, each row's score for every candidate,
and the round-trip filter every candidate passes before it is scored."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from featviz.backends.objective import combine, lambdas, weighs_fluency
from featviz.model.tokens import Tokens
from featviz.search.archive import Archive
from featviz.search.config import DreamConfig
from featviz.search.moves import select, select_index


def row_params(cfg: DreamConfig, device):
    caps = [float(c) for c in cfg.rows.caps][: cfg.rows.batch]
    lam = lambdas(cfg.rows.batch - len(caps), cfg.rows.lam_min, cfg.rows.lam_max, include_zero=True)
    lam_t = torch.tensor([0.0] * len(caps) + lam, device=device)
    cap_t = torch.tensor(caps + [math.inf] * len(lam), device=device)
    return lam_t, cap_t


def stable_unique_index(tokens: Tokens, ids: torch.Tensor, archive: Archive | None = None):
    """Indices of the rows of ``ids`` worth scoring: the first of each distinct row, not
    in ``archive``, and stable under decode and re-encode."""
    new, seen = [], set()
    for i, row in enumerate(ids.tolist()):
        key = tuple(row)
        if key in seen or (archive is not None and key in archive):
            continue
        seen.add(key)
        new.append((i, row))
    ok = tokens.stable_many([row for _, row in new])
    return [i for (i, _), good in zip(new, ok) if good]


def stable_unique(tokens: Tokens, ids: torch.Tensor, archive: Archive | None = None):
    return ids[stable_unique_index(tokens, ids, archive)]


def scores_for_rows(act, xe, lam, cap):
    """(rows, pool) matrix: each row's score for every pool member."""
    return combine(act[None], xe[None], lam[:, None], cap[:, None])


def focus_rows(act: torch.Tensor, lam, cap, halvings: int, by: str = "activation",
               xe=None, ids=None, xe_cap: float = math.inf) -> torch.Tensor:
    """The rows that search on after ``halvings`` rounds of successive halving (sorted
    indices).  ``by="activation"``: every row that weighs fluency (their scores do not
    compare across rows), and the strongest ceil(m / 2**halvings) by activation of the m
    rows that weigh activation alone.  ``by="fluent"``: the best ceil(B / 2**halvings) of
    all B rows, by their member's activation at ``xe`` <= ``xe_cap`` (members above it
    last); a member that several rows hold counts once, for the row whose cap is the
    loosest at or under ``xe_cap`` (then the largest lambda), and its other rows rank
    last."""
    if by == "fluent":
        return _focus_fluent(act, xe, ids, lam, cap, halvings, xe_cap)
    pure = ~weighs_fluency(lam, cap)
    m = int(pure.sum())
    if not halvings or m < 2:
        return torch.arange(len(act), device=act.device)
    keep = max(1, math.ceil(m / 2 ** halvings))
    a = torch.where(pure, torch.nan_to_num(act.float(), nan=-math.inf), -math.inf)
    order = torch.argsort(a, descending=True, stable=True)
    chosen = torch.zeros(len(act), dtype=torch.bool, device=act.device)
    chosen[order[:keep]] = True
    return torch.nonzero(chosen | ~pure).flatten()


def _focus_fluent(act, xe, ids, lam, cap, halvings: int, xe_cap: float) -> torch.Tensor:
    B = len(act)
    if not halvings or B < 2:
        return torch.arange(B, device=act.device)
    keep = max(1, math.ceil(B / 2 ** halvings))
    # the rows in order of preference for a shared member: caps at or under xe_cap from
    # the loosest, then lambdas from the largest, then the other caps
    capl, laml = cap.tolist(), lam.tolist()
    pref = sorted(range(B), key=lambda r: (0, -capl[r]) if capl[r] <= xe_cap
                  else (1, -laml[r]) if math.isinf(capl[r]) else (2, capl[r]))
    a, x = act.float().tolist(), xe.float().tolist()
    seen, key = set(), {}
    for r in pref:
        member = tuple(ids[r].tolist())
        fluent = x[r] <= xe_cap and not math.isnan(a[r])
        key[r] = a[r] if fluent and member not in seen else -math.inf
        seen.add(member)
    ranked = sorted(pref, key=lambda r: -key[r])         # stable: ties keep the preference
    return torch.tensor(sorted(ranked[:keep]), device=act.device)


def population(archive: Archive, lam, cap, dev, distance: int = 0):
    """Per row, the archived candidate with the best score for that row's lambda or cap
    (rows kept ``distance`` tokens apart, see ``moves.select_index``)."""
    keys = list(archive.entries)
    pool = torch.tensor(keys, device=dev)
    pa = torch.tensor([archive.entries[k][0] for k in keys], device=dev)
    px = torch.tensor([archive.entries[k][1] for k in keys], device=dev)
    return select(scores_for_rows(torch.nan_to_num(pa, nan=-math.inf), px, lam, cap), pool,
                  distance)


@dataclass
class Population:
    """The current rows: token ids (B, n) with their exact activation and xe."""

    ids: torch.Tensor
    act: torch.Tensor
    xe: torch.Tensor

    @classmethod
    def from_archive(cls, archive: Archive, lam, cap, dev, distance: int = 0) -> "Population":
        ids = population(archive, lam, cap, dev, distance)
        rows = [archive.entries[tuple(k)] for k in ids.tolist()]
        return cls(ids, torch.tensor([a for a, _ in rows], device=dev),
                   torch.tensor([x for _, x in rows], device=dev))

    def merge(self, ids, act, xe, lam, cap, distance: int = 0) -> "Population":
        """Each row's best of itself and the newly scored candidates (the one pool merge)."""
        pool = torch.cat([self.ids, ids])
        pa = torch.nan_to_num(torch.cat([self.act, act]), nan=-math.inf)
        px = torch.cat([self.xe, xe])
        best = select_index(scores_for_rows(pa, px, lam, cap), pool, distance)
        return Population(pool[best], pa[best], px[best])

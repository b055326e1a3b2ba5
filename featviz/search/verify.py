"""Verification: decode, re-encode and a fresh float32 forward pass give every number
featviz reports."""
from __future__ import annotations

import math

import torch

from featviz.backends.torch.score import exact_scores
from featviz.model.tokens import Tokens
from featviz.search.archive import Archive
from featviz.search.result import Candidate


def verify_many(handle, target, tokens: Tokens, keys, n, batch: int = 64) -> dict:
    """Decode, re-encode, and run a fresh forward pass: the only numbers we report.
    Returns {key: Candidate, or None where the re-encoded text is not prefix + these
    tokens + suffix}.  Stable candidates are scored together (all have the same length)."""
    out, stable = {}, []
    for key in dict.fromkeys(keys):
        ids = handle.encode(tokens.text(key))
        body = ids[len(tokens.prefix): len(ids) - len(tokens.suffix)]
        if (len(body) != n or ids[:len(tokens.prefix)] != tokens.prefix
                or ids[len(ids) - len(tokens.suffix):] != tokens.suffix):
            out[key] = None
        else:
            stable.append((key, list(body)))
    for i in range(0, len(stable), batch):
        part = stable[i:i + batch]
        full = tokens.full(torch.tensor([b for _, b in part], device=handle.device))
        act, xe = exact_scores(handle, target, full, tokens.start, n)
        for j, (key, body) in enumerate(part):
            out[key] = Candidate(text=handle.decode(list(key)), token_ids=body,
                                 tokens=handle.token_strings(body),
                                 activation=float(act[j]), xe=float(xe[j]))
    return out


def verify_one(handle, target, tokens: Tokens, key, n) -> Candidate | None:
    return verify_many(handle, target, tokens, [key], n)[key]


def verified_frontier(handle, target, tokens: Tokens, archive: Archive, n: int, limits,
                      slack: float = 0.0):
    """The activation-vs-fluency frontier of float32-verified candidates (xe ascending):
    the archive's frontier plus, for each xe limit, the best few candidates under it
    (``slack`` widens the search xe, which bf16 may misjudge a little), all verified in one
    batched pass.  Returns (frontier, how many candidates were verified)."""
    def best_few(limit):
        return sorted(((a, k) for k, (a, x) in archive.entries.items()
                       if x <= limit + slack and a == a), reverse=True)[:8]

    front_keys = [k for k, _, _ in archive.frontier()]
    checked = verify_many(handle, target, tokens,
                          front_keys + [k for lim in limits for _, k in best_few(lim)], n)

    def best_under(limit):
        """Highest verified activation with verified xe <= limit, from the best few."""
        best = None
        for _, k in best_few(limit):
            c = checked[k]
            if c is not None and c.xe <= limit and (best is None or c.activation > best.activation):
                best = c
        return best

    verified = [c for c in (checked[k] for k in front_keys) if c is not None]
    extra = [c for c in (best_under(lim) for lim in limits) if c is not None]
    frontier, top = [], -math.inf
    for c in sorted({tuple(c.token_ids): c for c in verified + extra}.values(),
                    key=lambda c: (c.xe, -c.activation)):
        if c.activation > top:
            frontier.append(c)
            top = c.activation
    return frontier, len(checked)

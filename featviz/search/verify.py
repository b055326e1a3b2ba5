"""Verification: decode, re-encode and a fresh float32 forward pass give every number
featviz reports."""
from __future__ import annotations

import math

import torch

from featviz.backends.torch.score import exact_scores
from featviz.model.tokens import Tokens
from featviz.search.archive import Archive
from featviz.search.result import Candidate
from featviz.targets.core import PerRow


def verify_jobs(handle, tokens: Tokens, jobs, n, batch: int = 64) -> list[dict]:
    """Decode, re-encode, and run a fresh forward pass: the only numbers we report.
    ``jobs``: [(target, keys)].  Returns per job {key: Candidate, or None where the
    re-encoded text is not prefix + these tokens + suffix}.  The stable candidates of all
    jobs are scored together, ``batch`` rows a pass, each row reading its own job's target."""
    outs, stable = [], []
    for j, (_, keys) in enumerate(jobs):
        out = {}
        keys = list(dict.fromkeys(keys))
        for key, ids in zip(keys, tokens.round_trip(keys)):
            body = ids[len(tokens.prefix): len(ids) - len(tokens.suffix)]
            if (len(body) != n or ids[:len(tokens.prefix)] != tokens.prefix
                    or ids[len(ids) - len(tokens.suffix):] != tokens.suffix):
                out[key] = None
            else:
                stable.append((j, key, list(body)))
        outs.append(out)
    targets = tuple(t for t, _ in jobs)
    for i in range(0, len(stable), batch):
        part = stable[i:i + batch]
        full = tokens.full(torch.tensor([b for _, _, b in part], device=handle.device))
        target = targets[0] if len(targets) == 1 else PerRow(targets, tuple(j for j, _, _ in part))
        act, xe = exact_scores(handle, target, full, tokens.start, n)
        for r, (j, key, body) in enumerate(part):
            outs[j][key] = Candidate(text=handle.decode(list(key)), token_ids=body,
                                     tokens=handle.token_strings(body),
                                     activation=float(act[r]), xe=float(xe[r]))
    return outs


def verify_many(handle, target, tokens: Tokens, keys, n, batch: int = 64) -> dict:
    """``verify_jobs`` for one target: {key: Candidate or None}."""
    return verify_jobs(handle, tokens, [(target, keys)], n, batch)[0]


def verify_one(handle, target, tokens: Tokens, key, n) -> Candidate | None:
    return verify_many(handle, target, tokens, [key], n)[key]


UNSCORED_XE = 32    # candidates scored for activation alone that verification settles


def frontier_keys(archive: Archive, limits, slack: float = 0.0):
    """What ``verified_frontier`` verifies: the archive's frontier keys, its
    ``UNSCORED_XE`` strongest candidates whose xe the search never computed (verification
    computes it, so they can join the frontier), and for each xe limit its best few
    candidates (``slack`` widens the search xe, which bf16 may misjudge a little).
    Returns (frontier keys, [best-few keys per limit])."""
    def best_few(limit):
        return [k for _, k in sorted(((a, k) for k, (a, x) in archive.entries.items()
                                      if x <= limit + slack and a == a), reverse=True)[:8]]

    front = [k for k, _, _ in archive.frontier()] + archive.strongest_without_xe(UNSCORED_XE)
    return front, [best_few(lim) for lim in limits]


def assemble_frontier(checked: dict, front_keys, few, limits):
    """The activation-vs-fluency frontier (xe ascending) of verified candidates: the
    verified frontier keys plus each limit's best verified candidate under it."""
    def best_under(keys, limit):
        """Highest verified activation with verified xe <= limit, from the best few."""
        best = None
        for k in keys:
            c = checked[k]
            if c is not None and c.xe <= limit and (best is None or c.activation > best.activation):
                best = c
        return best

    verified = [c for c in (checked[k] for k in front_keys) if c is not None]
    extra = [c for c in (best_under(keys, lim) for keys, lim in zip(few, limits)) if c is not None]
    frontier, top = [], -math.inf
    for c in sorted({tuple(c.token_ids): c for c in verified + extra}.values(),
                    key=lambda c: (c.xe, -c.activation)):
        if c.activation > top:
            frontier.append(c)
            top = c.activation
    return frontier


def verified_frontier(handle, target, tokens: Tokens, archive: Archive, n: int, limits,
                      slack: float = 0.0):
    """The activation-vs-fluency frontier of float32-verified candidates (xe ascending):
    the archive's frontier plus, for each xe limit, the best few candidates under it, all
    verified in one batched pass.  Returns (frontier, how many candidates were verified)."""
    front, few = frontier_keys(archive, limits, slack)
    checked = verify_many(handle, target, tokens, front + [k for keys in few for k in keys], n)
    return assemble_frontier(checked, front, few, limits), len(checked)

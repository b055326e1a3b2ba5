"""Verification: decode, re-encode and a fresh float32 forward pass give every number
featviz reports."""
from __future__ import annotations

import torch

from featviz.backends.torch.score import exact_scores
from featviz.model.tokens import Tokens
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

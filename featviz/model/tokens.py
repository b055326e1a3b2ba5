"""The layout of a dreamed sequence: BOS + fixed prefix + optimised tokens + fixed suffix."""
from __future__ import annotations

import torch


class Tokens:
    """The fixed parts around the optimised tokens and the round-trip check."""

    def __init__(self, handle, prefix_ids: list[int], suffix_ids: list[int]):
        self.handle = handle
        self.prefix = list(prefix_ids)
        self.suffix = list(suffix_ids)
        self.start = 1 + len(self.prefix)          # position of the first optimised token

    def full(self, ids: torch.Tensor) -> torch.Tensor:
        b = ids.shape[0]
        dev = ids.device
        parts = [torch.full((b, 1), self.handle.bos_id, device=dev, dtype=torch.long)]
        if self.prefix:
            parts.append(torch.tensor([self.prefix] * b, device=dev, dtype=torch.long))
        parts.append(ids)
        if self.suffix:
            parts.append(torch.tensor([self.suffix] * b, device=dev, dtype=torch.long))
        return torch.cat(parts, 1)

    def round_trip(self, rows) -> list[list[int]]:
        """Each id row as prefix + row + suffix, decoded to text and encoded again: the
        tokens a user's copy of the text gives.  One batched tokenizer call each way (it runs
        on every candidate, so it is the search's main CPU cost on a GPU)."""
        full = [self.prefix + list(map(int, r)) + self.suffix for r in rows]
        return self.handle.encode_many(self.handle.decode_many(full))

    def stable_many(self, rows) -> list[bool]:
        """For each id row: does the round trip give back exactly prefix + row + suffix?"""
        return [again == self.prefix + list(map(int, r)) + self.suffix
                for again, r in zip(self.round_trip(rows), rows)]

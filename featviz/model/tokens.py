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

    def text(self, ids) -> str:
        return self.handle.decode(list(self.prefix) + list(ids) + list(self.suffix))

    def stable(self, ids) -> bool:
        return self.stable_many([ids])[0]

    def stable_many(self, rows) -> list[bool]:
        """For each id row: does decoding prefix + row + suffix and encoding the text again
        give back exactly these tokens?  One batched tokenizer call each way (the check
        runs on every candidate, so it is the search's main CPU cost on a GPU)."""
        full = [self.prefix + list(map(int, r)) + self.suffix for r in rows]
        return [again == want for again, want in
                zip(self.handle.encode_many(self.handle.decode_many(full)), full)]

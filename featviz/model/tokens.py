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
        ids = list(map(int, ids))
        return self.handle.encode(self.text(ids)) == self.prefix + ids + self.suffix

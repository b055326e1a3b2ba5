"""The readable vocabulary: tokens a person can read, computed once per tokenizer."""
from __future__ import annotations

import torch

_CACHE: dict = {}


def _printable(s: str) -> bool:
    return bool(s) and all(0x20 <= ord(c) <= 0x7E for c in s)


def readable_mask(handle, rule: str = "ascii") -> torch.Tensor:
    """Bool mask (vocab,) of tokens that decode to non-empty ASCII-printable text and are
    not special tokens.  ``rule='all'`` allows every non-special token."""
    tok = handle.tokenizer
    key = (id(tok), handle.vocab_size, rule)
    if key not in _CACHE:
        special = set(getattr(tok, "all_special_ids", []) or [])
        mask = torch.zeros(handle.vocab_size, dtype=torch.bool)
        n = min(handle.vocab_size, len(tok))
        for i in range(n):
            if i in special:
                continue
            if rule == "all":
                mask[i] = True
            else:
                mask[i] = _printable(tok.decode([i], clean_up_tokenization_spaces=False))
        if not mask.any():
            from featviz.errors import FeatvizError
            raise FeatvizError("the readable vocabulary is empty for this tokenizer; "
                               "use vocab rule 'all'")
        _CACHE[key] = mask
    return _CACHE[key].to(handle.device)

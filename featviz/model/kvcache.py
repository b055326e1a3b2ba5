"""KV-cache helpers that hide how the installed transformers names and trims its cache."""
from __future__ import annotations

import inspect


def cache_kw(model):
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def drop_newest(cache, layers: int) -> None:
    """Remove the newest position from the first ``layers`` layers of a KV cache: what a
    forward that stopped after those layers left there."""
    if hasattr(cache, "layers"):                   # one object per layer (transformers 5)
        for layer in cache.layers[:layers]:
            layer.keys, layer.values = layer.keys[..., :-1, :], layer.values[..., :-1, :]
    else:                                          # key_cache / value_cache lists (4.x)
        for i in range(layers):
            cache.key_cache[i] = cache.key_cache[i][..., :-1, :]
            cache.value_cache[i] = cache.value_cache[i][..., :-1, :]

"""The search's arithmetic: bfloat16 autocast with the weight matrices cast once.

Under ``torch.autocast`` a float32 weight that does not require a gradient (a frozen
model's) is cast to bfloat16 again at every product.  On the 2-core CPU those casts were
most of a small forward: an 8-row, 13-token pass of SmolLM2-135M took 126 ms with them
and 70 ms with the weights already in bfloat16.  ``SearchArithmetic`` keeps a bfloat16
copy of every ``nn.Linear`` (and GPT-2 ``Conv1D``) weight and bias, and of the input
embedding for the products soft tokens take with it, and swaps the copies in while it is
entered.  Autocast casts a
float32 weight to exactly that copy, so every result is bit-identical to plain autocast;
only the repeated casts go.  On leaving, the float32 parameters are back in place, so
every report (``targets.read``, float32, outside the context) reads the model as loaded.

The copies are made on first use, kept with the model for later searches, and made again
for a weight written in place since (its version counter moved) or replaced.
"""
from __future__ import annotations

import contextlib
import weakref

import torch

_COPIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # model -> {key: copy}
_DEPTH: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()    # model -> entries
_SAVED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()    # model -> originals


def copy_bytes(handle) -> int:
    """Bytes the bfloat16 copies of ``handle``'s weight matrices take (a matrix shared by
    two modules, as a tied embedding is, counted once)."""
    seen = {id(t): t.numel() for t in _products(handle.model)}
    seen[id(handle.embedding)] = handle.embedding.numel()
    return 2 * sum(seen.values())


def _product_modules(model):
    """The modules whose weights enter products: ``nn.Linear`` and transformers' GPT-2
    ``Conv1D`` (an addmm)."""
    return [m for m in model.modules()
            if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"]


def _products(model):
    return [p for m in _product_modules(model) for p in (m.weight, getattr(m, "bias", None))
            if p is not None and p.dtype == torch.float32]


def _bf16(cache: dict, t: torch.Tensor) -> torch.Tensor:
    """The bfloat16 copy of ``t``, one per tensor (tied matrices share it), made again when
    ``t`` was written since (its version counter moved)."""
    hit = cache.get(id(t))
    if hit is None or hit[0]() is not t or hit[1] != t._version:
        hit = (weakref.ref(t), t._version,
               torch.nn.Parameter(t.detach().to(torch.bfloat16), requires_grad=False))
        cache[id(t)] = hit
    return hit[2]


def _swap_in(model) -> None:
    cache = _COPIES.setdefault(model, {})
    for k in [k for k, hit in cache.items() if hit[0]() is None]:    # replaced since
        del cache[k]
    saved = []
    for m in _product_modules(model):
        for name in ("weight", "bias"):
            p = getattr(m, name, None)
            if p is not None and p.dtype == torch.float32:
                saved.append((m, name, p))
                setattr(m, name, _bf16(cache, p))
    _SAVED[model] = saved


def _swap_out(model) -> None:
    for m, name, p in reversed(_SAVED.pop(model, [])):
        setattr(m, name, p)


@contextlib.contextmanager
def as_loaded(model):
    """The float32 parameters back in place for the block, even inside an entered
    ``SearchArithmetic`` (for code that copies the weights, such as the JAX conversion)."""
    saved = _SAVED.get(model)
    if not saved:
        yield
        return
    for m, name, p in saved:
        setattr(m, name, p)
    try:
        yield
    finally:
        cache = _COPIES[model]
        for m, name, p in saved:
            setattr(m, name, _bf16(cache, p))


def product_embedding(handle) -> torch.Tensor:
    """The input embedding as products take it (soft tokens, one-hot gradients): its
    bfloat16 copy while a ``SearchArithmetic`` with copies is entered, else the float32
    matrix (which autocast would cast to that same copy)."""
    W = handle.embedding
    if _DEPTH.get(handle.model, 0) and W.dtype == torch.float32:
        return _bf16(_COPIES.setdefault(handle.model, {}), W)
    return W


class SearchArithmetic:
    """A reusable context for the search's passes: bfloat16 autocast on ``handle``'s
    device when ``bf16``, with the weight matrices' bfloat16 copies swapped in when
    ``keep_copies`` (see the module's doc); plain float32 when not ``bf16``.  Entries nest
    (the copies go in at the first and out at the last); not for use from two threads."""

    def __init__(self, handle, bf16: bool, keep_copies: bool = True):
        self.handle, self.bf16 = handle, bf16
        self.copies = bf16 and keep_copies
        self._autocasts = []

    def __enter__(self):
        ac = torch.autocast(self.handle.device.type, dtype=torch.bfloat16, enabled=self.bf16)
        ac.__enter__()
        self._autocasts.append(ac)
        if self.copies:
            model = self.handle.model
            depth = _DEPTH.get(model, 0)
            try:
                if depth == 0:
                    _swap_in(model)
            except BaseException:
                _swap_out(model)
                self._autocasts.pop().__exit__(None, None, None)
                raise
            _DEPTH[model] = depth + 1
        return self

    def __exit__(self, *exc):
        try:
            if self.copies:
                model = self.handle.model
                _DEPTH[model] -= 1
                if _DEPTH[model] == 0:
                    _swap_out(model)
        finally:
            self._autocasts.pop().__exit__(*exc)
        return False

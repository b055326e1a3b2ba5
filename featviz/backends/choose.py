"""Which backend and which precision a search runs with on this handle's device."""
from __future__ import annotations

import torch

from featviz.errors import FeatvizError

_ANNOUNCED: set = set()


def fast_bf16(device) -> bool:
    """Whether bfloat16 products are fast on ``device``: a CUDA GPU that supports them, or
    a CPU whose oneDNN has bfloat16 kernels (AVX512-BF16 / AMX).  Elsewhere torch emulates
    them: on a 2-core AVX2 CPU a 1024x1024 bf16 matmul took 3.2 s against 0.04 s in fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_precision(handle, choice: str) -> str:
    """"bf16" or "fp32" for the search on this handle's device ("auto": see fast_bf16)."""
    if choice != "auto":
        return choice
    return "bf16" if fast_bf16(handle.device) else "fp32"


def resolve_backend(handle, choice: str) -> str:
    """"torch" or "jax" for this model; "auto" picks JAX where supported and says so once."""
    from featviz.backends.jax.forward import JAX_TYPES, supported, use_device
    if choice == "torch":
        return "torch"
    if choice == "jax" and not supported(handle):
        raise FeatvizError(f"the JAX backend does not run '{handle.model_type}' models; it runs "
                           f"{', '.join(JAX_TYPES)} (use --backend torch)")
    if choice == "jax":
        use_device(handle)
    if choice == "auto":
        pick = "jax" if supported(handle) else "torch"
        if pick == "jax":
            try:
                use_device(handle)
            except FeatvizError:
                pick = "torch"             # auto never fails for want of a JAX device
        if handle.name not in _ANNOUNCED:
            _ANNOUNCED.add(handle.name)
            import sys
            print(f"featviz: backend auto: using {pick} for {handle.model_type} models",
                  file=sys.stderr)
        return pick
    return "jax"


# ---------------------------------------------------------------- the two interfaces
# A Scorer has evaluate(ids, with_xe=True) -> (activation, xe or None, per-position values)
# and onehot_grads(ids, lam, cap) -> (gradient, next-token logits), on hard optimised tokens.
# A Relaxer is called as relaxer(theta, lam, cap, *, seconds, restart, on_step) and returns
# (theta, RelaxTrace).  The search uses nothing else of a backend.

def scorer(backend: str, handle, target, tokens, n: int, precision: str, arithmetic):
    """The exact scorer of ``backend`` for one target."""
    if backend == "jax":
        from featviz.backends.jax.score import JaxScorer
        return JaxScorer(handle, target, tokens, n, precision=precision)
    from featviz.backends.torch.score import TorchScorer
    return TorchScorer(tokens, target, arithmetic)


def relaxer(backend: str, handle, target, mask, tokens, settings, generator, arithmetic):
    """The relaxation of ``backend`` for ``target`` (a ``PerRow`` for several at once);
    ``generator``: one per target, for the torch relaxation's noise (JAX keys its own)."""
    if backend == "jax":
        from featviz.backends.jax.relax import JaxRelaxer
        return JaxRelaxer(handle, target, mask, tokens, settings)
    from featviz.backends.torch.relax import TorchRelaxer
    return TorchRelaxer(handle, target, mask, tokens, settings, generator, arithmetic)

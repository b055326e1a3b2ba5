"""Forward passes with hooks: read target values at every position.

One hooked forward serves any set of targets; it stops after the deepest block
that any target needs unless logits are wanted.  Hook sites use TransformerLens
names (``SITES``): per block L, ``hook_resid_pre``, ``hook_resid_mid``,
``hook_resid_post``, ``hook_attn_out``, ``hook_mlp_out``, ``attn.hook_q/k/v`` (before
RoPE; k and v with the model's KV heads) and ``attn.hook_z`` (heads flattened: (batch,
seq, heads * head_dim)), ``attn.hook_pattern``, ``mlp.hook_pre`` (a gated MLP's gate),
``mlp.hook_pre_linear`` (its linear branch), ``mlp.hook_post`` and
``attn.hook_attn_scores``; and ``ln_final.hook_normalized`` (at layer -1).
"""
from __future__ import annotations

import contextlib
import sys

import torch


class _StopForward(Exception):
    pass


@contextlib.contextmanager
def _attn_impl(handle, impl: str | None):
    model = handle.model
    old = model.config._attn_implementation
    if impl is None or impl == old:
        yield
        return
    model.set_attn_implementation(impl)
    try:
        yield
    finally:
        model.set_attn_implementation(old)


def run(handle, sites, *, input_ids=None, inputs_embeds=None, need_logits=False,
        model_kwargs: dict | None = None):
    """One forward pass; returns ({(site, layer): tensor}, logits or None).

    ``input_ids`` / ``inputs_embeds`` must already start with BOS.  Gradients flow
    through the captured tensors when the inputs carry them.  ``need_logits``: False,
    True (every position) or (lo, hi): the logits of positions lo..hi-1.  (The model
    still unembeds every position: passing transformers' ``logits_to_keep`` made the
    float32 relaxation step 10-15 % slower on the 2-core CPU, not faster.)
    """
    span = need_logits if isinstance(need_logits, tuple) else None
    sites = set(sites)
    caps: dict = {}
    hooks = []

    def keep(key, value):
        caps[key] = value

    def first_arg(key):          # a module's input: positional, or transformers' keyword
        return lambda m, args, kwargs: keep(key, args[0] if args else kwargs["hidden_states"])

    last = handle.n_layers - 1
    scores_of = {}                       # attention module -> (SCORES, layer), see _scores_impl
    for site, layer in sites:
        if site == LN_FINAL:             # layer -1: after the last block
            hooks.append(handle.blocks[last].register_forward_hook(
                lambda m, args, out, key=(site, layer): keep(
                    key, normalized(handle, out[0] if isinstance(out, tuple) else out))))
        elif site == SCORES:
            scores_of[handle.attn_module(layer)] = (site, layer)
        elif site == RESID_PRE:
            hooks.append(handle.blocks[layer].register_forward_pre_hook(
                first_arg((site, layer)), with_kwargs=True))
        elif site == RESID_MID:
            hooks.append(handle.ln2(layer).register_forward_pre_hook(
                first_arg((site, layer)), with_kwargs=True))
        elif site == ATTN_OUT:
            hooks.append(handle.attn_out_proj(layer).register_forward_hook(
                lambda m, args, out, key=(site, layer): keep(key, out)))
        elif site == MLP_PRE:
            hooks.append(handle.mlp_in_proj(layer).register_forward_hook(
                lambda m, args, out, key=(site, layer): keep(key, out)))
        elif site == MLP_PRE_LINEAR:
            hooks.append(handle.mlp_up_proj(layer).register_forward_hook(
                lambda m, args, out, key=(site, layer): keep(key, out)))
        elif site in (Q, K, V):
            mod, cols = handle.qkv_proj(layer, site[-1])
            hooks.append(mod.register_forward_hook(
                lambda m, args, out, key=(site, layer), cols=cols: keep(key, out[..., cols])))
        elif site == MLP_OUT:
            hooks.append(handle.mlp_module(layer).register_forward_hook(
                lambda m, args, out, key=(site, layer): keep(key, out)))
        elif site == MLP_POST:
            hooks.append(handle.mlp_out_proj(layer).register_forward_pre_hook(
                lambda m, args, key=(site, layer): keep(key, args[0])))
        elif site == Z:
            hooks.append(handle.attn_out_proj(layer).register_forward_pre_hook(
                lambda m, args, key=(site, layer): keep(key, args[0])))
        elif site == PATTERN:
            hooks.append(handle.attn_module(layer).register_forward_hook(
                lambda m, args, out, key=(site, layer): keep(key, out[1])))
        elif site == RESID_POST:
            hooks.append(handle.blocks[layer].register_forward_hook(
                lambda m, args, out, key=(site, layer): keep(
                    key, out[0] if isinstance(out, tuple) else out)))
        else:  # pragma: no cover - guarded by the target parser
            raise ValueError(site)
    stop_layer = None
    if sites and not need_logits:
        stop_layer = max(last if layer < 0 else layer for _, layer in sites)

        def stop(m, args, out):
            raise _StopForward

        hooks.append(handle.blocks[stop_layer].register_forward_hook(stop))
    need_eager = any(site == PATTERN for site, _ in sites)
    impl = _scores_impl(scores_of, keep) if scores_of else "eager" if need_eager else None
    logits = None
    try:
        with _attn_impl(handle, impl):
            kw = {"use_cache": False, **(model_kwargs or {})}
            out = handle.model(input_ids=input_ids, inputs_embeds=inputs_embeds, **kw)
            logits = out.logits
    except _StopForward:
        pass
    finally:
        for h in hooks:
            h.remove()
        _SCORES_SINK.clear()
    if span is not None and logits is not None:
        logits = logits[:, span[0]:span[1]]
    return caps, logits


def normalized(handle, x: torch.Tensor) -> torch.Tensor:
    """ln_final.hook_normalized: the final norm's output before its weight (and bias), as
    TransformerLens defines it: x / rms(x) (RMSNorm) or (x - mean) / std (LayerNorm)."""
    norm = handle.final_norm
    if handle.arch == "llama":
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    x = x - x.mean(-1, keepdim=True)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)


_SCORES_SINK: dict = {}


def _scores_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """transformers' eager attention of the module's own model, after keeping
    attn.hook_attn_scores: query . key * scaling (keys repeated over grouped heads) where the
    causal mask lets the query see the key, 0 where it hides it (TransformerLens holds -inf
    there; featviz reads 0 so corpus statistics stay finite)."""
    eager = sys.modules[type(module).__module__].eager_attention_forward
    sink = _SCORES_SINK.get(module)
    if sink is not None:
        rep = query.shape[1] // key.shape[1]
        k = key.repeat_interleave(rep, dim=1) if rep > 1 else key
        s = torch.matmul(query, k.transpose(2, 3)) * (scaling if scaling is not None
                                                      else query.shape[-1] ** -0.5)
        T, K = s.shape[-2:]
        seen = torch.ones(T, K, dtype=torch.bool, device=s.device).tril(K - T)
        sink[1](sink[0], s.masked_fill(~seen, 0.0))
    return eager(module, query, key, value, attention_mask, scaling=scaling, **kwargs)


def _scores_impl(scores_of: dict, keep) -> str:
    """Register (once) the attention implementation that keeps scores, and route the
    requested modules' scores to ``keep``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    AttentionInterface.register("featviz_scores", _scores_attention)
    AttentionMaskInterface.register("featviz_scores", eager_mask)      # eager's additive mask
    _SCORES_SINK.clear()
    _SCORES_SINK.update({m: (key, keep) for m, key in scores_of.items()})
    return "featviz_scores"


def with_bos(handle, ids) -> torch.Tensor:
    """(batch, n) token ids -> (batch, 1 + n) with BOS prepended."""
    ids = torch.as_tensor(ids, dtype=torch.long, device=handle.device)
    if ids.dim() == 1:
        ids = ids[None]
    bos = torch.full((ids.shape[0], 1), handle.bos_id, dtype=torch.long, device=ids.device)
    return torch.cat([bos, ids], dim=1)


def xe_of(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) of ``targets`` (batch, n) under ``logits`` (batch, n, V)
    that predict them position by position.  Returns shape (batch,)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -logp.gather(-1, targets[..., None])[..., 0].mean(dim=-1)


def xe_from_logits(logits: torch.Tensor, ids: torch.Tensor, start: int = 1) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) of ids[:, start:] given the model's logits.

    Position ``start`` is predicted from everything before it (the BOS-only
    context included when start = 1).  Returns shape (batch,).
    """
    return xe_of(logits[:, start - 1:-1], ids[:, start:])

# Hook sites, named as TransformerLens names them (blocks.L.<site>).
MLP_POST, Z, PATTERN, RESID_POST = "mlp.hook_post", "attn.hook_z", "attn.hook_pattern", "hook_resid_post"
RESID_PRE, RESID_MID, ATTN_OUT, MLP_OUT = ("hook_resid_pre", "hook_resid_mid", "hook_attn_out",
                                           "hook_mlp_out")
MLP_PRE, MLP_PRE_LINEAR = "mlp.hook_pre", "mlp.hook_pre_linear"
Q, K, V = "attn.hook_q", "attn.hook_k", "attn.hook_v"     # before RoPE; k, v: the KV heads
SCORES = "attn.hook_attn_scores"         # (batch, head, query, key), before the softmax
LN_FINAL = "ln_final.hook_normalized"    # read at layer -1: after the last block
SITES = (RESID_PRE, RESID_MID, RESID_POST, ATTN_OUT, MLP_OUT, Z, PATTERN, MLP_POST, MLP_PRE,
         MLP_PRE_LINEAR, Q, K, V, SCORES, LN_FINAL)
# the sites whose width is d_model (the residual stream and what blocks write into it)
RESIDUAL_SITES = (RESID_PRE, RESID_MID, RESID_POST, ATTN_OUT, MLP_OUT)

"""Direct logit effect: what a unit writes straight into the next-token logits.

For an MLP neuron that is its output-weight column through the final norm's scale
and the unembedding (as Neuroscope and SAE dashboards show it); for a residual
direction, the direction itself; for an SAE feature, its decoder row (carried into the
residual stream by the attention output or MLP down projection when the SAE reads
hook_z or mlp.hook_post).  Heads and attention probabilities have no single output
direction, so they get none.
"""
from __future__ import annotations

import torch

from featviz.model.forward import MLP_POST, Z
from featviz.targets.core import Atom, Target
from featviz.targets.kinds import RESIDUAL_KINDS


def _through(module, v: torch.Tensor, arch: str) -> torch.Tensor:
    """v pushed through a projection into the residual stream (llama: Linear (out, in);
    gpt2: Conv1D (in, out)); biases are not part of a direction."""
    w = module.weight.detach().float()
    return w @ v if arch == "llama" else v @ w


def _sae_direction(handle, target: Atom) -> torch.Tensor:
    spec = target.sae_spec
    row = torch.from_numpy(target.sae_weights_np()["W_dec"][target.index]).float()
    if spec.site == Z:
        if spec.head is not None:                 # a one-head SAE: its slice of W_O
            full = torch.zeros(handle.n_heads * handle.head_dim)
            full[spec.head * handle.head_dim:(spec.head + 1) * handle.head_dim] = row
            row = full
        return _through(handle.attn_out_proj(spec.layer), row.to(handle.device), handle.arch)
    if spec.site == MLP_POST:
        return _through(handle.mlp_out_proj(spec.layer), row.to(handle.device), handle.arch)
    return row


def final_norm_scale(handle) -> torch.Tensor:
    return handle.final_norm.weight.detach().float()


def output_direction(handle, target: Target) -> torch.Tensor | None:
    """The residual-stream vector the target writes (or is read along), or None."""
    if not isinstance(target, Atom):
        return None
    if target.kind == "mlp":
        w = handle.mlp_out_proj(target.layer).weight.detach().float()
        # llama: Linear (d_model, d_mlp); gpt2: Conv1D (d_mlp, d_model)
        return w[:, target.index] if handle.arch == "llama" else w[target.index]
    if target.kind == "sae":
        return _sae_direction(handle, target)
    if target.kind in RESIDUAL_KINDS:
        if target.file is not None:
            return target.direction(handle).float()
        e = torch.zeros(handle.d_model)
        e[target.index] = 1.0
        return e
    return None


def logit_effect(handle, target: Target, k: int = 10) -> dict | None:
    """Top and bottom ``k`` tokens by direct logit effect: {"top": [(token, value)], ...}."""
    d = output_direction(handle, target)
    if d is None:
        return None
    d = d.to(handle.device)
    if handle.arch == "gpt2":
        # LayerNorm subtracts the mean before scaling: only the centred direction reaches
        # the logits (as folding the norm into the unembedding does); RMSNorm has no centring
        d = d - d.mean()
    with torch.no_grad():
        eff = handle.unembedding.detach().float() @ (d * final_norm_scale(handle))
    special = list(getattr(handle.tokenizer, "all_special_ids", []) or [])
    if special:
        eff[torch.as_tensor([s for s in special if s < eff.numel()], dtype=torch.long)] = float("nan")
    ok = torch.nan_to_num(eff, nan=-float("inf"))
    top = torch.topk(ok, k).indices.tolist()
    bot = torch.topk(torch.nan_to_num(-eff, nan=-float("inf")), k).indices.tolist()
    row = lambda ids: [[handle.decode([i]), float(eff[i])] for i in ids]  # noqa: E731
    return {"top": row(top), "bottom": row(bot)}

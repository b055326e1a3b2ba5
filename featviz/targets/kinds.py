"""What each target kind reads: one table that the torch reader (``Atom.per_position``), the
miner and the JAX reader (``backends.jax.forward``) all use, so a kind is defined once.

To add a kind, add its hook site and reader here and its spec to ``targets.spec``; see
docs/design.md.  An SAE feature's site is the SAE's hook (``targets.sae``), so its entry
has none.  A reader takes the captured hook tensor and the
atom's resolved arguments and returns (batch, positions) values.  ``Ops`` holds the few
array operations torch and JAX spell differently.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from featviz.model.forward import (
    ATTN_OUT,
    LN_FINAL,
    MLP_OUT,
    MLP_POST,
    MLP_PRE,
    MLP_PRE_LINEAR,
    PATTERN,
    RESID_MID,
    RESID_POST,
    RESID_PRE,
    SCORES,
    K,
    Q,
    V,
    Z,
)
from featviz.targets.sae import encode


@dataclass(frozen=True)
class Ops:
    """Array operations a reading needs that the frameworks spell differently."""

    norm: Callable        # L2 norm over the last axis
    zeros: Callable       # zeros(shape, like)
    max: Callable         # max over the last axis
    mean: Callable        # mean over the last axis
    relu: Callable        # max(v, 0)
    topk_relu: Callable   # topk_relu(v, k): ReLU of v's k largest entries (last axis), zeros
                          # elsewhere, the k chosen as torch.topk / lax.top_k choose them
                          # (may overwrite v: pass a temporary)
    affine: Callable      # affine(x, W, b): x @ W + b


def _affine(x, w, b, out=None):
    """x @ w + b; ``out``: a contiguous (rows, w.shape[1]) buffer to write it into (torch
    only, the same bits: a buffer used batch after batch saves the first touch of fresh
    pages, a tenth of the matmul's time for an SAE's encoding on a CPU)."""
    if out is None and (x.dim() < 2 or w.dim() != 2 or b.dim() != 1):
        return x @ w + b
    import torch
    return torch.addmm(b, x.reshape(-1, x.shape[-1]), w, out=out).view(
        x.shape[:-1] + (w.shape[1],))


def topk_relu_entries(v, k: int):
    """(indices, values) of the ReLU of torch ``v``'s k largest entries (last axis), the
    k chosen as torch.topk chooses them: the only entries of ``topk_relu`` that may be
    nonzero.  Without a gradient on the CPU, by ``blocked_topk`` (the same k)."""
    if v.requires_grad or v.device.type != "cpu":
        top = v.topk(k, dim=-1)
        return top.indices, top.values.clamp(min=0)
    idx, val = blocked_topk(v, k)
    return idx, val.clamp(min=0)


def _blocks(n: int, k: int) -> int:
    """How many blocks ``blocked_topk`` splits n entries into (0: too few to gain)."""
    for nb in (512, 256, 1024, 128, 64):
        if n % nb == 0 and nb >= 2 * k and n // nb >= 8:
            return nb
    return 0


def blocked_topk(v, k: int):
    """(indices, values) of the k largest entries of torch ``v`` along its last axis, the
    same k entries as ``v.topk(k)`` (in another order within the k), about twice as fast on
    a CPU for k much below the axis (an SAE's d_sae): the axis is split into ``nb`` strided
    blocks (block j holds entries j, j + nb, ...); the k largest entries all lie in the k
    blocks of largest max (a block outside holds nothing above those k maxima), so the
    k-th largest entry of those k blocks' entries is the k-th of the row.  Both k-th values
    come from sorting rows (numpy's sort on a CPU: several times torch.topk's speed on
    short rows); the entries at or above them are then found by one compare.  Rows with a
    tie at the k-th block max or at the k-th value (where torch.topk's own choice decides)
    or a NaN are redone by torch.topk."""
    import numpy as np
    import torch
    n = v.shape[-1]
    nb = _blocks(n, k)
    if not nb or v.numel() == 0 or not v.dtype.is_floating_point:
        top = v.topk(k, dim=-1)
        return top.indices, top.values
    h = v.reshape(-1, n)
    R, m = h.shape[0], n // nb
    hv = h.view(R, m, nb)
    bmax = hv.amax(1)                                                # (R, nb) block maxima
    on_cpu = bmax.device.type == "cpu" and bmax.dtype in (torch.float32, torch.float64)

    def two_largest(x, i):          # the i-th and (i+1)-th largest of each row (NaN: largest)
        if on_cpu:                  # numpy's sort: several times torch.topk's speed here
            srt = torch.from_numpy(np.sort(x.numpy(), axis=1))
            return srt[:, -i], srt[:, -i - 1], torch.isnan(srt[:, -1])
        top = x.topk(i + 1, dim=1)
        return top.values[:, i - 1], top.values[:, i], torch.isnan(x).any(1)

    def exactly(on, i):             # column indices (R, i) of rows with i entries on, in order
        if on_cpu:
            return torch.from_numpy(np.flatnonzero(on.numpy()) % on.shape[1]).view(R, i)
        return torch.nonzero(on)[:, 1].view(R, i)

    tau, nxt, nan = two_largest(bmax, k)
    redo = ~(nxt < tau) | nan                   # not exactly k blocks at or above tau
    sel = bmax >= tau[:, None]
    if bool(redo.any()):                        # any k blocks: these rows are redone
        sel[redo] = torch.arange(nb, device=h.device) < k
    blk = exactly(sel, k)
    cand = hv.gather(2, blk[:, None, :].expand(R, m, k)).reshape(R, m * k)
    kth, after, _ = two_largest(cand, k)
    redo |= ~(after < kth)                      # a tie at the k-th value: torch.topk decides
    best = cand >= kth[:, None]
    if bool(redo.any()):
        best[redo] = torch.arange(m * k, device=h.device) < k
        j = exactly(best, k)
        r = torch.nonzero(redo).squeeze(1)
        full = h[r].topk(k, dim=-1)
        out_v = cand.gather(1, j).index_put((r,), full.values)
        out_i = ((j // k) * nb + blk.gather(1, j % k)).index_put((r,), full.indices)
    else:
        j = exactly(best, k)
        out_v, out_i = cand.gather(1, j), (j // k) * nb + blk.gather(1, j % k)
    return out_i.reshape(v.shape[:-1] + (k,)), out_v.reshape(v.shape[:-1] + (k,))


def topk_relu(v, k: int, entries=None):
    """ReLU of v's k largest entries, zeros elsewhere (``entries``: the ones of
    ``topk_relu_entries``, when the caller has them)."""
    idx, val = entries or topk_relu_entries(v, k)
    out = v.new_zeros(v.shape) if v.requires_grad else v.zero_()   # no gradient: reuse v
    return out.scatter_(-1, idx, val)


TORCH_OPS = Ops(norm=lambda v: v.norm(dim=-1), zeros=lambda shape, like: like.new_zeros(shape),
                max=lambda v: v.max(dim=-1).values, mean=lambda v: v.mean(dim=-1),
                relu=lambda v: v.clamp(min=0), topk_relu=topk_relu, affine=_affine)


@dataclass(frozen=True)
class Read:
    """An atom's arguments, resolved for one capture: ``index`` (neuron, head or dimension;
    a constant or a traced JAX index), ``key`` (attention key position), ``direction``
    (a unit vector on the capture's device), ``n_heads``, ``head_dim``, ``sae`` (an SAE
    feature's (SaeSpec, weights as arrays of the capture's framework)) and ``dim`` (a
    dimension within a head)."""

    index: object = None
    key: int | None = None
    direction: object = None
    n_heads: int = 0
    head_dim: int = 0
    sae: tuple | None = None
    dim: int | None = None


def head_norms(x, n_heads: int, head_dim: int, ops: Ops = TORCH_OPS):
    """L2 norm of every head's output z: (batch, seq, n_heads * head_dim) -> (batch, seq,
    n_heads).  The one definition of a head's value."""
    b, t, _ = x.shape
    return ops.norm(x.reshape(b, t, n_heads, head_dim))


def _unit(x, r: Read, ops: Ops):
    return x[..., r.index]


def _head(x, r: Read, ops: Ops):
    return head_norms(x, r.n_heads, r.head_dim, ops)[..., r.index]


def _head_dim(x, r: Read, ops: Ops):
    return x[..., r.index * r.head_dim + r.dim]


def _attn(x, r: Read, ops: Ops):
    if r.key >= x.shape[-1]:          # a key the causal mask hides (a KV-cache step): 0
        return ops.zeros((x.shape[0], x.shape[2]), x)
    return x[:, r.index, :, r.key]


def _resid(x, r: Read, ops: Ops):
    return x @ r.direction if r.direction is not None else x[..., r.index]


def _sae(x, r: Read, ops: Ops):
    spec, weights = r.sae
    return encode(spec, weights, x, ops, r.index)


@dataclass(frozen=True)
class Kind:
    site: str | None      # the TransformerLens hook site it reads (an SAE's: its hook)
    read: Callable        # (x, Read, Ops) -> (batch, positions)


KINDS = {
    "mlp": Kind(MLP_POST, _unit),     # blocks.L.mlp.hook_post[..., N]
    "head": Kind(Z, _head),           # |blocks.L.attn.hook_z[..., H, :]|
    "attn": Kind(PATTERN, _attn),     # blocks.L.attn.hook_pattern[:, H, :, K]
    "resid": Kind(RESID_POST, _resid),  # blocks.L.hook_resid_post @ unit direction (or [..., N])
    "resid_pre": Kind(RESID_PRE, _resid),   # blocks.L.hook_resid_pre, likewise
    "resid_mid": Kind(RESID_MID, _resid),   # blocks.L.hook_resid_mid
    "attn_out": Kind(ATTN_OUT, _resid),     # blocks.L.hook_attn_out
    "mlp_out": Kind(MLP_OUT, _resid),       # blocks.L.hook_mlp_out
    "sae": Kind(None, _sae),          # feature N of the SAE at a path, at the SAE's hook
    "mlp_pre": Kind(MLP_PRE, _unit),  # blocks.L.mlp.hook_pre[..., N] (a gated MLP's gate)
    "mlp_pre_linear": Kind(MLP_PRE_LINEAR, _unit),  # blocks.L.mlp.hook_pre_linear[..., N]
    "q": Kind(Q, _head_dim),          # blocks.L.attn.hook_q[..., H, D] (before RoPE)
    "k": Kind(K, _head_dim),          # blocks.L.attn.hook_k[..., H, D] (H: a KV head)
    "v": Kind(V, _head_dim),          # blocks.L.attn.hook_v[..., H, D] (H: a KV head)
    "z": Kind(Z, _head_dim),          # blocks.L.attn.hook_z[..., H, D]
    "scores": Kind(SCORES, _attn),    # blocks.L.attn.hook_attn_scores[:, H, :, K] (0 where masked)
    "ln_final": Kind(LN_FINAL, _resid),  # ln_final.hook_normalized (layer -1), like resid
}
# kinds read along a residual-stream vector: a basis dimension or a direction file
RESIDUAL_KINDS = ("resid", "resid_pre", "resid_mid", "attn_out", "mlp_out", "ln_final")
# kinds read at a head and a key position: attn:L:H:K
KEY_KINDS = ("attn", "scores")
# kinds read at one head and a dimension of it: q:L:H:D
HEAD_DIM_KINDS = ("q", "k", "v", "z")
# kinds read as one column of their hook (neurons and dimensions)
UNIT_KINDS = ("mlp", "mlp_pre", "mlp_pre_linear")


def reduce_with(how: str, i, values, ops: Ops = TORCH_OPS):
    """Apply a reduction plan (``Atom.reduce_plan``) to (batch, seq) values."""
    if how == "at":
        return values[:, i]
    body = values[:, i[0]:i[1]]
    return ops.max(body) if how == "max" else ops.mean(body)

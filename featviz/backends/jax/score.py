"""Swap scoring on the JAX backend: exact scores of hard token batches and the gradient
of each row's score with respect to its one-hot tokens, both jit-compiled.

    scorer = JaxScorer(handle, target, tokens, n)
    act, xe, per = scorer.evaluate(ids)               # same as discretize.evaluate
    grad, lm = scorer.onehot_grads(ids, lam, cap)     # same as discretize.onehot_grads

Batches are padded to a few fixed sizes (powers of two from 8), so the swap loop, whose
batch sizes vary a little from iteration to iteration, compiles each function at most
once per size and never inside a steady loop.  Inputs and outputs are torch tensors, so
the discretizer's bookkeeping (archive, population, proposals) is shared with torch.
"""
from __future__ import annotations

import numpy as np
import torch

from featviz.backends.jax.forward import forward_raw, to_jax
from featviz.backends.jax.read import canonical, directions_for, evaluate, per_position
from featviz.backends.jax.relax import shared, st_embed
from featviz.backends.objective import combine

_MIN_BUCKET = 8


def bucket(b: int, largest: int = 64) -> int:
    """The padded batch size for b rows: the next power of two from 8, at most ``largest``."""
    size = _MIN_BUCKET
    while size < min(b, largest):
        size *= 2
    return size


def _xe(logits, full, s, n):
    """discretize's xe: mean next-token cross-entropy of positions s..s+n-1, from the
    logits of positions s-1..s+n-2 (``forward_raw``'s need_logits=(s - 1, s - 1 + n))."""
    import jax
    import jax.numpy as jnp
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)   # (as torch does)
    tgt = full[:, s:s + n]
    return -jnp.take_along_axis(logp, tgt[..., None], -1)[..., 0].mean(-1)


def _score_fns(jm, canon, s: int, n: int, dirs):
    """(jitted scores(params, full, idx, with_xe), jitted grads(params, full, lam, cap, idx))
    for a canonical target (``jaxfwd.canonical``): shared by every target of its form."""
    import jax
    import jax.numpy as jnp
    sites = frozenset(canon.sites())
    spec, inv, scale = jm.spec, jm.inv_freq, jm.rope_scale

    def scores(params, full, idx, with_xe):
        # one pass over BOS + prefix + tokens: running the shared start once at batch 1
        # (jaxfwd.forward_after) saved 6-9 % per call but added ~2 s of compile per batch
        # bucket, more than a 90 s search wins back
        caps, logits = forward_raw(spec, params, inv, scale, params["embed"][full], sites,
                                (s - 1, s - 1 + n) if with_xe else False)
        act = evaluate(canon, caps, jm, dirs, (s, s + n), indices=idx)
        per = per_position(canon, caps, jm, dirs, indices=idx)[:, s:s + n]
        xe = _xe(logits, full, s, n) if with_xe else jnp.full_like(act, jnp.nan)
        return act, xe, per

    def grads(params, full, lam, cap, idx):
        E = params["embed"]
        ids = full[:, s:s + n]
        onehot = jax.nn.one_hot(ids, E.shape[0], dtype=E.dtype)

        def score(x):
            x_full = E[full].at[:, s:s + n].set(st_embed(x, params, ids))   # gather forward
            caps, logits = forward_raw(spec, params, inv, scale, x_full, sites, (s - 1, s - 1 + n))
            act = evaluate(canon, caps, jm, dirs, (s, s + n), indices=idx)
            xe = _xe(logits, full, s, n)          # through the model only, as in torch
            return combine(act, xe, lam, cap).sum(), logits
        return jax.grad(score, has_aux=True)(onehot)
    return jax.jit(scores, static_argnums=(3,)), jax.jit(grads)


class JaxScorer:
    """Jitted exact scoring and one-hot gradients for one target (see the module doc)."""

    def __init__(self, handle, target, tokens, n: int, batch_size: int = 64,
                 precision: str = "fp32"):
        import jax.numpy as jnp
        self.jm = jm = to_jax(handle, precision)
        self.tokens, self.n, self.batch_size = tokens, n, batch_size
        self.dev = handle.device
        dirs = directions_for(target, handle)
        canon, idx = canonical(target)
        self.idx = jnp.asarray(idx)
        key = (id(jm), canon, tuple(tokens.prefix), tuple(tokens.suffix), n,
               tuple(sorted(dirs)))
        self._scores, self._grads = shared(
            ("scorer",) + key, lambda: (_score_fns(jm, canon, tokens.start, n, dirs), jm))

    def _full(self, ids: torch.Tensor):
        b = ids.shape[0]
        size = bucket(b, self.batch_size)
        full = self.tokens.full(ids.cpu()).numpy().astype(np.int32)
        if size > b:                                   # pad with copies of the first row
            full = np.concatenate([full, np.repeat(full[:1], size - b, 0)])
        return full

    def evaluate(self, ids: torch.Tensor, with_xe: bool = True):
        """(activation (B,), xe (B,) or None, per-position values (B, n)) as torch tensors."""
        acts, xes, pers = [], [], []
        for i in range(0, ids.shape[0], self.batch_size):
            part = ids[i:i + self.batch_size]
            a, x, p = self._scores(self.jm.params, self._full(part), self.idx, with_xe)
            k = part.shape[0]
            acts.append(np.asarray(a)[:k])
            xes.append(np.asarray(x)[:k])
            pers.append(np.asarray(p)[:k])
        t = lambda parts: torch.from_numpy(np.concatenate(parts)).to(self.dev)  # noqa: E731
        return t(acts), (t(xes) if with_xe else None), t(pers)

    def onehot_grads(self, ids: torch.Tensor, lam: torch.Tensor, cap: torch.Tensor):
        """(grad (P, n, V), next-token logits (P, n, V)) as torch tensors."""
        P = ids.shape[0]
        full = self._full(ids)
        pad = full.shape[0] - P
        lam_np = np.concatenate([lam.cpu().numpy(), np.zeros(pad)]).astype(np.float32)
        cap_np = np.concatenate([cap.cpu().numpy(), np.full(pad, np.inf)]).astype(np.float32)
        g, lm = self._grads(self.jm.params, full, lam_np, cap_np, self.idx)
        return (torch.from_numpy(np.array(g[:P])).to(self.dev),
                torch.from_numpy(np.array(lm[:P])).to(self.dev))

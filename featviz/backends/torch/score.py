"""Exact scores and one-hot gradients of hard token batches, and the soft objective's
forward, in torch."""
from __future__ import annotations

import torch

from featviz.backends.objective import combine, needs_fluency
from featviz.model.forward import run, xe_of
from featviz.model.precision import product_embedding
from featviz.model.tokens import Tokens
from featviz.targets.read import score_ids


def evaluate(tokens: Tokens, target, ids: torch.Tensor, batch_size: int = 64,
             with_xe: bool = True):
    """Exact scores of hard optimised tokens (batch, n).

    Returns (activation (batch,), xe (batch,) or None, per-position target values over the
    optimised positions (batch, n)).  Without xe the forward stops after the target's layer.
    """
    n, s = ids.shape[1], tokens.start
    span = (s, s + n)
    act, xe, per = score_ids(tokens.handle, [target], tokens.full(ids), span=span,
                             xe_span=span if with_xe else None, per_span=span,
                             batch_size=batch_size)
    return act[0], xe, per[0]


def onehot_grads(tokens: Tokens, target, ids: torch.Tensor, lam, cap, with_lm: bool = True):
    """Gradient of each row's score w.r.t. its one-hot tokens, plus next-token logits.

    Returns (grad (P, n, V), lm_logits (P, n, V) predicting each optimised position).
    ``with_lm`` False (only where no row weighs fluency): no logits (None), and the
    forward stops after the target's layer.
    """
    h = tokens.handle
    W = product_embedding(h)
    full = tokens.full(ids)
    x = torch.zeros(ids.shape[0], ids.shape[1], W.shape[0], device=ids.device)
    x.scatter_(-1, ids[..., None], 1.0)
    x.requires_grad_(True)
    emb = h.model.get_input_embeddings()(full).detach()
    s, n = tokens.start, ids.shape[1]
    emb = torch.cat([emb[:, :s], x @ W, emb[:, s + n:]], 1)
    if not with_lm and needs_fluency(lam, cap):
        raise ValueError("onehot_grads: rows that weigh fluency need the LM head")
    caps, logits = run(h, target.sites(), inputs_embeds=emb,
                       need_logits=(s - 1, s - 1 + n) if with_lm else False)
    act = target.evaluate(caps, h, (s, s + n))
    xe = xe_of(logits, full[:, s:s + n]) if needs_fluency(lam, cap) else None
    score = combine(act, xe, lam, cap)
    grad, = torch.autograd.grad(score.sum(), x)
    return grad, (logits.detach() if with_lm else None)


def soft_xe(logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Soft cross-entropy of soft tokens ``probs`` (batch, n, V) under the model's
    next-token logits (batch, n, V) predicting them.  Returns (batch,)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(probs * logp).sum(-1).mean(-1)


def forward_scores(handle, target, embeds: torch.Tensor, probs: torch.Tensor, start: int,
                   lam: torch.Tensor, cap: torch.Tensor):
    """Forward soft or one-hot tokens.  Returns (score, act, xe_soft or None, logits or None).

    ``embeds`` is the full input (BOS + prefix + tokens + suffix); ``probs`` the
    (batch, n, V) distribution of the optimised tokens starting at ``start``.
    """
    fluency = needs_fluency(lam, cap)
    n = probs.shape[1]                      # the logits that predict the soft tokens
    caps, logits = run(handle, target.sites(), inputs_embeds=embeds,
                       need_logits=(start - 1, start - 1 + n) if fluency else False)
    act = target.evaluate(caps, handle, (start, start + n))
    xe = soft_xe(logits, probs) if fluency else None
    return combine(act, xe, lam, cap), act, xe, logits


def exact_scores(handle, target, ids_full: torch.Tensor, start: int, n: int):
    """Exact activation and xe of hard sequences (no grad).  ids_full includes BOS."""
    act, xe, _ = score_ids(handle, [target], ids_full, span=(start, start + n),
                           xe_span=(start, start + n), batch_size=max(1, len(ids_full)))
    return act[0], xe


class TorchScorer:
    """The Scorer interface on torch (see ``backends.choose.scorer``): exact scores and
    one-hot gradients of hard optimised tokens, in the search's precision."""

    def __init__(self, tokens: Tokens, target, arithmetic):
        self.tokens, self.target, self.arithmetic = tokens, target, arithmetic

    def evaluate(self, ids, with_xe: bool = True):
        with self.arithmetic:
            return evaluate(self.tokens, self.target, ids, with_xe=with_xe)

    def onehot_grads(self, ids, lam, cap):
        with self.arithmetic:
            return onehot_grads(self.tokens, self.target, ids, lam, cap)

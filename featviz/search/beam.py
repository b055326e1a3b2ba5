"""LM-guided beam search: grow the prompt left to right from the model's own top tokens.

Every candidate extends a beam by one of the model's top-k next tokens (so the text
stays where the model itself would go) and is kept by activation - lambda * xe.  The
KV cache makes each step cost one token per candidate, and the fluency of a child is
known from its parent's next-token distribution without another pass.
"""
from __future__ import annotations

import time

import torch

from featviz.backends.objective import combine
from featviz.model.forward import run
from featviz.model.kvcache import cache_kw, drop_newest


def _atoms(target):
    return list(dict.fromkeys(a for _, a in target.terms()))


def _read(handle, atoms, caps, length):
    """Each atom's (batch, q) values at the positions in ``caps``, in a sequence that will
    have ``length`` tokens (attention keys resolve against it)."""
    return {a: a.per_position(caps, handle, length).float() for a in atoms}


def _forward(handle, target, ids, cache, kw, length):
    """Full forward of ``ids`` after ``cache``: ({atom: values at the new positions}, logits,
    cache)."""
    out_cache = {}

    def grab(m, args, out):
        out_cache["logits"] = out.logits
        out_cache["cache"] = out[kw] if kw == "cache" else out["past_key_values"]

    h = handle.model.register_forward_hook(grab)
    try:
        caps, logits = run(handle, target.sites(), input_ids=ids, need_logits=True,
                           model_kwargs={kw: cache, "use_cache": True})
    finally:
        h.remove()
    return _read(handle, _atoms(target), caps, length), logits, out_cache["cache"]


def _candidates(logp: torch.Tensor, k: int, generator=None) -> torch.Tensor:
    """The k next tokens each beam tries: the model's top k, or with a generator k
    Gumbel-top-k draws from its distribution."""
    if generator is None:
        return logp.topk(k, -1).indices
    u = torch.rand(logp.shape, generator=generator, device=logp.device).clamp_(1e-10, 1)
    return (logp - torch.log(-torch.log(u))).topk(k, -1).indices


def beam_search(handle, target, tokens, mask: torch.Tensor, n: int, *, beams: int = 8,
                expand: int = 48, lam: float = 0.5, generator: torch.Generator | None = None,
                sample: bool = False, deadline: float | None = None):
    """Returns (ids (beams, n), activation (beams,), xe (beams,)) of the final beams.

    A candidate is ranked by the target's value on the sequence so far
    (``Target.evaluate_prefix``): every position's reading is exact (a key not reached yet
    reads 0, as the causal mask makes it), @max / @mean run over the optimised positions so
    far, and a fixed position @I counts once it exists.  The final beams' activation is
    the target's value on the whole sequence.

    ``deadline`` (a ``time.perf_counter()`` value): once it has passed, the beams are
    completed greedily (each beam's most likely readable next token), so a time budget
    holds however slow a step is."""
    kw = cache_kw(handle.model)
    dev = handle.device
    sites = target.sites()
    atoms = _atoms(target)
    s0 = tokens.start
    length, span = s0 + n, (s0, s0 + n)                  # the finished sequence (no suffix)
    target.check_length(length, span)
    depth = max(layer for _, layer in sites) + 1          # layers a candidate runs through
    neg = torch.where(mask, 0.0, float("-inf"))
    with torch.no_grad():
        start = torch.tensor([[handle.bos_id, *tokens.prefix]], device=dev)
        hist, logits, cache = _forward(handle, target, start, None, kw, length)
        logp = torch.log_softmax(logits[:, -1].float(), -1) + neg      # (1, V)
        ids = torch.zeros(1, 0, dtype=torch.long, device=dev)
        xe_sum = torch.zeros(1, device=dev)
        act = torch.zeros(1, device=dev)
        lam_t, cap_t = torch.tensor([lam], device=dev), torch.tensor([float("inf")], device=dev)
        for t in range(n):
            late = deadline is not None and time.perf_counter() > deadline
            k = 1 if late else min(expand, int(mask.sum()))
            cand = _candidates(logp, k, generator if sample and not late else None)  # (b, k)
            lp = logp.gather(-1, cand)
            cache.batch_repeat_interleave(k)
            # candidates run only up to the target's layer; the kept ones then run through
            # the whole model for their next-token logits (k x fewer full passes)
            caps, _ = run(handle, sites, input_ids=cand.reshape(-1, 1),
                          model_kwargs={kw: cache, "use_cache": True})
            new = _read(handle, atoms, caps, length)
            kid_hist = {a: torch.cat([hist[a].repeat_interleave(k, 0), new[a]], 1) for a in atoms}
            kid_act = target.evaluate_prefix(kid_hist, length, span)
            kid_xe = (xe_sum.repeat_interleave(k) - lp.reshape(-1)) / (t + 1)
            score = combine(kid_act.float(), kid_xe, lam_t, cap_t)
            score = torch.nan_to_num(score, nan=-float("inf"))
            keep = score.topk(min(beams, score.numel())).indices
            cache.batch_select_indices(keep)
            drop_newest(cache, depth)
            parent = keep // k
            ids = torch.cat([ids[parent], cand.reshape(-1)[keep, None]], 1)
            xe_sum = kid_xe[keep] * (t + 1)
            act = kid_act[keep].float()
            hist = {a: v[keep] for a, v in kid_hist.items()}
            if t + 1 < n:
                _, kid_logits, cache = _forward(handle, target, ids[:, -1:], cache, kw, length)
                logp = torch.log_softmax(kid_logits[:, -1].float(), -1) + neg
    return ids, act, xe_sum / n

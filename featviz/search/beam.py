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


def _forward(handle, atoms, sites, ids, cache, kw, length):
    """Full forward of ``ids`` after ``cache``: ({atom: values at the new positions}, logits,
    cache)."""
    out_cache = {}

    def grab(m, args, out):
        out_cache["logits"] = out.logits
        out_cache["cache"] = out[kw] if kw == "cache" else out["past_key_values"]

    h = handle.model.register_forward_hook(grab)
    try:
        caps, logits = run(handle, sites, input_ids=ids, need_logits=True,
                           model_kwargs={kw: cache, "use_cache": True})
    finally:
        h.remove()
    return _read(handle, atoms, caps, length), logits, out_cache["cache"]


def _candidates(logp: torch.Tensor, k: int, generator=None) -> torch.Tensor:
    """The k next tokens each beam tries: the model's top k, or with a generator k
    Gumbel-top-k draws from its distribution."""
    if generator is None:
        return logp.topk(k, -1).indices
    u = torch.rand(logp.shape, generator=generator, device=logp.device).clamp_(1e-10, 1)
    return (logp - torch.log(-torch.log(u))).topk(k, -1).indices


def beam_search_many(handle, jobs, tokens, mask: torch.Tensor, n: int, *, beams: int = 8,
                     expand: int = 48, deadline: float | None = None):
    """Several beam searches at once, one per job ``(target, lam, generator or None)``: each
    job keeps its own ``beams`` beams by its own target and lambda and draws its sampled
    candidates (a generator given) from its own generator, while every step's forward
    passes run for all jobs' beams in one batch.  Returns [(ids (beams, n), activation
    (beams,), xe (beams,))] per job: what ``beam_search`` returns for that job alone.

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
    targets = [t for t, _, _ in jobs]
    sites = set().union(*(t.sites() for t in targets))
    atoms = [_atoms(t) for t in targets]
    every_atom = list(dict.fromkeys(a for job_atoms in atoms for a in job_atoms))
    s0 = tokens.start
    length, span = s0 + n, (s0, s0 + n)                  # the finished sequence (no suffix)
    for t in targets:
        t.check_length(length, span)
    depth = max(layer for _, layer in sites) + 1          # layers a candidate runs through
    neg = torch.where(mask, 0.0, float("-inf"))
    J = len(jobs)
    with torch.no_grad():
        start = torch.tensor([[handle.bos_id, *tokens.prefix]], device=dev)
        first, logits, cache = _forward(handle, every_atom, sites, start, None, kw, length)
        cache.batch_repeat_interleave(J)
        logp = (torch.log_softmax(logits[:, -1].float(), -1) + neg).repeat(J, 1)   # (J, V)
        count = [1] * J                                   # beams per job, rows in job order
        ids = [torch.zeros(1, 0, dtype=torch.long, device=dev) for _ in jobs]
        xe_sum = [torch.zeros(1, device=dev) for _ in jobs]
        act = [torch.zeros(1, device=dev) for _ in jobs]
        hist = [{a: first[a] for a in job_atoms} for job_atoms in atoms]
        lams = [(torch.tensor([lam], device=dev), torch.tensor([float("inf")], device=dev))
                for _, lam, _ in jobs]
        for t in range(n):
            late = deadline is not None and time.perf_counter() > deadline
            k = 1 if late else min(expand, int(mask.sum()))
            offs = [sum(count[:j]) for j in range(J)]
            cand = torch.cat([_candidates(logp[o:o + c], k, None if late else g)
                              for o, c, (_, _, g) in zip(offs, count, jobs)])   # (rows, k)
            lp = logp.gather(-1, cand)
            cache.batch_repeat_interleave(k)
            # candidates run only up to the deepest target's layer; the kept ones then run
            # through the whole model for their next-token logits (k x fewer full passes)
            caps, _ = run(handle, sites, input_ids=cand.reshape(-1, 1),
                          model_kwargs={kw: cache, "use_cache": True})
            new = _read(handle, every_atom, caps, length)
            keep_all = []
            for j, (target, _, _) in enumerate(jobs):
                rows = slice(offs[j] * k, (offs[j] + count[j]) * k)
                kid_hist = {a: torch.cat([hist[j][a].repeat_interleave(k, 0), new[a][rows]], 1)
                            for a in atoms[j]}
                kid_act = target.evaluate_prefix(kid_hist, length, span)
                kid_xe = (xe_sum[j].repeat_interleave(k) - lp[offs[j]:offs[j] + count[j]]
                          .reshape(-1)) / (t + 1)
                score = torch.nan_to_num(combine(kid_act.float(), kid_xe, *lams[j]),
                                         nan=-float("inf"))
                keep = score.topk(min(beams, score.numel())).indices
                keep_all.append(keep + offs[j] * k)
                parent = keep // k
                ids[j] = torch.cat([ids[j][parent], cand[offs[j]:offs[j] + count[j]]
                                    .reshape(-1)[keep, None]], 1)
                xe_sum[j] = kid_xe[keep] * (t + 1)
                act[j] = kid_act[keep].float()
                hist[j] = {a: v[keep] for a, v in kid_hist.items()}
                count[j] = len(keep)
            cache.batch_select_indices(torch.cat(keep_all))
            drop_newest(cache, depth)
            if t + 1 < n:
                _, kid_logits, cache = _forward(handle, [], sites, torch.cat(ids)[:, -1:],
                                                cache, kw, length)
                logp = torch.log_softmax(kid_logits[:, -1].float(), -1) + neg
    return [(i, a, x / n) for i, a, x in zip(ids, act, xe_sum)]


def beam_search(handle, target, tokens, mask: torch.Tensor, n: int, *, beams: int = 8,
                expand: int = 48, lam: float = 0.5, generator: torch.Generator | None = None,
                sample: bool = False, deadline: float | None = None):
    """One LM-guided beam search (see ``beam_search_many``): (ids (beams, n), activation
    (beams,), xe (beams,)) of the final beams; candidates are sampled from ``generator``
    when ``sample``, else the model's top tokens."""
    return beam_search_many(handle, [(target, lam, generator if sample else None)], tokens,
                            mask, n, beams=beams, expand=expand, deadline=deadline)[0]

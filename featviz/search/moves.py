"""From relaxed logits to real tokens, and gradient-guided token swaps on real tokens.

Every candidate is kept only if decoding it and encoding the text again gives the
same tokens (so the text a user copies is exactly what was scored), and every
score here is an exact forward pass on hard tokens.
"""
from __future__ import annotations

import math

import torch

from featviz.model.forward import run
from featviz.model.tokens import Tokens


def rotations(ids: torch.Tensor, per_pos: torch.Tensor, floor: float, limit: int) -> torch.Tensor:
    """Rotate sequences so that a position that fired harder than ``floor`` ends last.

    For a last-position target, the tokens up to a strongly firing position carry the
    trigger with its local context; rotating them to the end keeps that context.
    """
    n = ids.shape[1]
    if n < 2 or not len(ids):
        return ids[:0]
    body = torch.nan_to_num(per_pos[:, :-1].float(), nan=-float("inf"))
    v, j = body.max(dim=1)
    order = torch.argsort(v, descending=True)[:limit]
    out = [torch.cat([ids[r, j[r] + 1:], ids[r, :j[r] + 1]]) for r in order.tolist()
           if v[r] > floor]
    return torch.stack(out) if out else ids[:0]


def propose(ids: torch.Tensor, grad: torch.Tensor, lm_logits: torch.Tensor, mask: torch.Tensor,
            children: int, k_grad: int, k_lm: int, lm_share: float,
            generator: torch.Generator, frozen: torch.Tensor | None = None,
            relax_top: torch.Tensor | None = None, relax_share: float = 0.0) -> torch.Tensor:
    """Children of each parent by single-token swaps (EPO/GCG move).

    Each child changes one random position to a token drawn from that position's
    top-k_grad tokens by gradient or, with probability lm_share (a number, or one per
    parent), from the model's own top-k_lm next tokens there (fluent by construction).
    With ``relax_top`` (P, n, k: the relaxation's top tokens per row and position), a
    ``relax_share`` of the children instead take one of those, at a position where the
    parent's token is not among them (any position when there is none).
    Returns (P*children, n).
    """
    P, n, V = grad.shape
    neg = torch.where(mask, 0.0, float("-inf"))
    top_g = (grad + neg).topk(k_grad, -1).indices            # (P, n, kg)
    lm = lm_logits.float()
    top_l = (lm + neg).topk(k_lm, -1).indices                 # (P, n, kl)
    kids = ids.repeat_interleave(children, 0).clone()        # (P*C, n)
    dev = ids.device            # every draw on the model's device, with its generator
    parent = torch.arange(P, device=dev).repeat_interleave(children)
    allowed = torch.ones(n, dtype=torch.bool, device=dev) if frozen is None else ~frozen.to(dev)
    # gradient swaps pick positions uniformly; LM swaps repair the least expected tokens
    surprisal = -torch.log_softmax(lm, -1).gather(-1, ids[..., None])[..., 0]   # (P, n)
    w_lm = torch.softmax(surprisal.clamp(max=30.0), -1) * allowed
    w_uni = allowed.float().expand(P, n)
    share = torch.as_tensor(lm_share, dtype=torch.float32, device=dev).expand(P)[parent]
    use_lm = torch.rand(P * children, generator=generator, device=generator.device) < share
    w = torch.where(use_lm[:, None], w_lm[parent], w_uni[parent]) + 1e-12 * allowed
    pos = torch.multinomial(w, 1, generator=generator)[:, 0]
    jg = torch.randint(0, k_grad, (P * children,), generator=generator, device=generator.device)
    jl = torch.randint(0, k_lm, (P * children,), generator=generator, device=generator.device)
    tok = torch.where(use_lm, top_l[parent, pos, jl], top_g[parent, pos, jg])
    if relax_top is not None and relax_share > 0:
        # the relaxation's choices, where it disagrees with the parent (the hope: its
        # final logits, summing every step's gradient under the Gumbel noise, rank tokens
        # more steadily than one step's gradient; at 90 s on a CPU they did not)
        use_rx = torch.rand(P * children, generator=generator, device=generator.device) \
            < relax_share
        differs = (relax_top != ids[..., None]).all(-1) & allowed                 # (P, n)
        w_rx = torch.where(differs.any(-1, keepdim=True), differs, allowed).float()
        pos_rx = torch.multinomial(w_rx[parent] + 1e-12 * allowed, 1, generator=generator)[:, 0]
        jr = torch.randint(0, relax_top.shape[-1], (P * children,), generator=generator,
                           device=generator.device)
        pos = torch.where(use_rx, pos_rx, pos)
        tok = torch.where(use_rx, relax_top[parent, pos_rx, jr], tok)
    kids[torch.arange(P * children, device=dev), pos] = tok
    return kids


def novel(draws: torch.Tensor, parents: int, per: int, seen) -> torch.Tensor:
    """Of ``draws`` (parent-major, as ``propose`` returns them), each parent's first
    ``per`` rows that are not in ``seen`` (an ``Archive`` or set of tuples) and not
    repeated.  Returns (<= parents * per, n)."""
    rows = draws.tolist()
    each = len(rows) // parents if parents else 0
    keep, met = [], set()
    for p in range(parents):
        got = 0
        for i in range(p * each, (p + 1) * each):
            key = tuple(rows[i])
            if got == per:
                break
            if key in met or key in seen:
                continue
            met.add(key)
            keep.append(i)
            got += 1
    return draws[torch.tensor(keep, dtype=torch.long, device=draws.device)]


def sweep_last(tokens: Tokens, target, ids: torch.Tensor, grad: torch.Tensor,
               lm_logits: torch.Tensor, mask: torch.Tensor, width: int):
    """Try ``width`` tokens at the last optimised position of every row at one token each.

    The rest of each row is computed once and kept in a KV cache (up to the target's
    layer only); each candidate then costs a single-token forward.  A last-token change
    leaves every earlier prediction alone, so the child's xe follows exactly from the
    parent's next-token distribution.  Returns (children (P*width, n), activation,
    xe delta to add to the parent's xe).  For last-position targets without a suffix.
    """
    from transformers import DynamicCache

    from featviz.model.kvcache import cache_kw
    h = tokens.handle
    P, n = ids.shape
    neg = torch.where(mask, 0.0, float("-inf"))
    half = max(1, width // 2)
    lm = lm_logits[:, -1].float()
    cand = torch.cat([(grad[:, -1].float() + neg).topk(half, -1).indices,
                      (lm + neg).topk(width - half, -1).indices], 1)          # (P, width)
    lp = torch.log_softmax(lm, -1)
    dxe = (lp.gather(-1, ids[:, -1:]) - lp.gather(-1, cand)) / n            # (P, width)
    kw = cache_kw(h.model)
    cache = DynamicCache(config=h.model.config)
    full = tokens.full(ids)
    last = tokens.start + n - 1
    with torch.no_grad():
        run(h, target.sites(), input_ids=full[:, :last], model_kwargs={kw: cache, "use_cache": True})
        cache.batch_repeat_interleave(cand.shape[1])
        caps, _ = run(h, target.sites(), input_ids=cand.reshape(-1, 1),
                      model_kwargs={kw: cache, "use_cache": True})
        act = target.evaluate(caps, h)            # @last targets only: the one new position
    kids = ids.repeat_interleave(cand.shape[1], 0).clone()
    kids[:, -1] = cand.reshape(-1)
    return kids, act, dxe.reshape(-1)


def crossover(pop: torch.Tensor, act: torch.Tensor, xe: torch.Tensor, count: int,
              max_tail: int, generator: torch.Generator) -> torch.Tensor:
    """Children that join a fluent member's head to a strong member's tail.

    The tail (last 1..max_tail tokens) comes from a member drawn among the higher
    activations, the head from one drawn among the lower xe: a trigger that only
    gibberish reached gets a natural context.
    """
    P, n = pop.shape
    if P < 2 or n < 2 or count < 1:
        return pop[:0]
    by_act = torch.argsort(torch.nan_to_num(act, nan=-float("inf")), descending=True)
    by_xe = torch.argsort(torch.nan_to_num(xe, nan=float("inf")))
    half = max(1, P // 2)
    a = by_act[torch.randint(0, half, (count,), generator=generator, device=generator.device)]
    b = by_xe[torch.randint(0, half, (count,), generator=generator, device=generator.device)]
    k = torch.randint(1, min(max_tail, n - 1) + 1, (count,), generator=generator,
                      device=generator.device)
    keep = torch.arange(n, device=pop.device)[None] >= (n - k)[:, None]     # tail mask
    return torch.where(keep, pop[a], pop[b])


def select_index(scores_rows: torch.Tensor, pool_ids: torch.Tensor,
                 distance: int = 0) -> torch.Tensor:
    """Per row (one lambda or cap each), the index of its pool member: the best by the
    row's score, or with ``distance`` > 0 the best that differs in at least ``distance``
    positions from every member chosen for an earlier row (rows are served in order; a
    row with no such member takes its best among the farthest ones, never a copy of an
    earlier pick while another member exists).  Keeps rows that share a lambda or cap in
    different basins instead of collapsing onto one sequence."""
    best = scores_rows.argmax(dim=1)
    if distance <= 0 or len(scores_rows) < 2:
        return best
    chosen = [int(best[0])]
    for r in range(1, len(scores_rows)):
        d = (pool_ids[None] != pool_ids[chosen][:, None]).sum(-1).min(0).values   # (P,)
        far = d >= min(distance, int(d.max()))
        s = torch.where(far, torch.nan_to_num(scores_rows[r], nan=-math.inf), -math.inf)
        i = int(s.argmax())
        chosen.append(i if s[i] > -math.inf else int(best[r]))
    return torch.tensor(chosen, device=pool_ids.device)


def select(scores_rows: torch.Tensor, pool_ids: torch.Tensor, distance: int = 0) -> torch.Tensor:
    """Per row, its pool member (see ``select_index``): (rows, n)."""
    return pool_ids[select_index(scores_rows, pool_ids, distance)]

"""Dreaming: find readable text that drives a target as high as it can go.

One config dataclass, one run function, one result dataclass (the nanoGCG shape):

    from featviz import DreamConfig, dream, dream_many
    result = dream(handle, "mlp:12:345", DreamConfig(budget_seconds=60))
    results = dream_many(handle, ["mlp:6:1", "mlp:6:2"], DreamConfig(budget_seconds=60))

Stages: model-sampled (or random) init -> Gumbel-softmax relaxation over the
readable vocabulary with one lambda (or xe cap) per row -> hard tokens sampled from
the relaxed logits -> gradient- and LM-guided single-token swaps scored exactly ->
round-trip check -> every reported number recomputed on the re-encoded text.
``TargetSearch`` holds one target's state through these stages; ``dream_many`` runs several
searches with the relaxation shared (each batch row reading its own target).
"""
from __future__ import annotations

import time
from dataclasses import replace

import torch
from tqdm.auto import tqdm

from featviz.backends.choose import resolve_backend, resolve_precision
from featviz.backends.torch.relax import relax
from featviz.errors import FeatvizError
from featviz.model.tokens import Tokens
from featviz.model.vocab import readable_mask
from featviz.search.budget import Clock, check_memory, fit_budget
from featviz.search.config import DreamConfig
from featviz.search.population import row_params
from featviz.search.result import DreamResult
from featviz.search.target_search import TargetSearch
from featviz.targets.core import PerRow, Target
from featviz.targets.spec import as_target


def dream(handle, target: Target | str, config: DreamConfig | None = None, *,
          progress: bool = True) -> DreamResult:
    """Search for readable text that maximises ``target``; see the module docstring."""
    return dream_many(handle, [target], config, progress=progress)[0]


def dream_many(handle, targets, config: DreamConfig | None = None, *,
               progress: bool = True) -> list[DreamResult]:
    """Dream several targets with one shared relaxation: target i owns rows
    i*batch .. (i+1)*batch-1 of a (targets x batch)-row relaxation (``PerRow``), so one
    compiled step serves them all; init, swaps and the verified report stay per target,
    and each target's result is what ``dream`` would compute from the same relaxed logits.
    ``budget_seconds`` is per target (the run takes about len(targets) times it)."""
    cfg = (config or DreamConfig()).check()
    targets = [as_target(t, handle) for t in targets]
    if not targets:
        raise FeatvizError("dream_many needs at least one target")
    K = len(targets)
    total = None if cfg.budget_seconds is None else cfg.budget_seconds * K
    clock = Clock(total)
    torch.manual_seed(cfg.seed)
    dev = handle.device
    mask = readable_mask(handle, cfg.vocab)
    prefix = handle.encode(cfg.prefix) if cfg.prefix else []
    suffix = handle.encode(cfg.suffix) if cfg.suffix else []
    tokens = Tokens(handle, prefix, suffix)
    for t in targets:         # a position or key the dream's sequences lack: say so now
        t.check_length(tokens.start + cfg.length + len(suffix),
                       (tokens.start, tokens.start + cfg.length))
    lam1, cap1 = row_params(cfg, dev)
    B, n = len(lam1), cfg.length
    rows = PerRow(tuple(targets), tuple(i for i in range(K) for _ in range(B)))
    joint = targets[0] if K == 1 else rows
    check_memory(handle, joint, cfg, K * B)
    backend = resolve_backend(handle, cfg.backend)
    user_cfg = cfg
    cfg = fit_budget(replace(cfg, precision=resolve_precision(handle, cfg.precision)), B)
    bar = tqdm(total=total or (cfg.steps * cfg.restarts + cfg.swap_iters * K),
               desc=f"dreaming {targets[0]}" if K == 1 else f"dreaming {K} targets",
               disable=not progress, leave=False, unit="s" if total else "step")

    def tick(k=1):
        if total:
            bar.n = min(round(clock.elapsed(), 1), total)
            bar.refresh()
        else:
            bar.update(k)

    searches = [TargetSearch(handle, t, cfg, tokens, mask, tick, backend) for t in targets]
    lam, cap = lam1.repeat(K), cap1.repeat(K)

    # ---- stages 1-3: per-target init, one shared relaxation, per-target discretization ----
    relax_budget = None if total is None else total * cfg.relax_fraction
    t_relax = time.perf_counter()
    t_init = 0.0
    for r in range(cfg.restarts):
        if r > 0 and relax_budget is not None and clock.elapsed() >= relax_budget:
            break
        t = time.perf_counter()
        inits = []
        for s in searches:                      # each target's init keeps to its share
            end = None if total is None else (
                time.perf_counter() + cfg.budget_seconds * cfg.init_fraction / cfg.restarts)
            inits.append(s.start(r, end))
        t_init += time.perf_counter() - t
        if all(i is None for i in inits) or cfg.steps == 0 or cfg.relax_fraction == 0 or (
                relax_budget is not None and clock.elapsed() >= relax_budget):
            continue
        theta = torch.zeros(K * B, n, handle.vocab_size, device=dev)
        for i, init in enumerate(inits):
            if init is not None:
                theta[i * B:(i + 1) * B].scatter_(-1, init[..., None], cfg.init_scale)
        snaps = []

        def embeds(soft_emb):
            full = tokens.full(torch.zeros(K * B, n, dtype=torch.long, device=dev))
            e = handle.model.get_input_embeddings()(full)
            s = tokens.start
            return torch.cat([e[:, :s], soft_emb, e[:, s + n:]], 1)

        def on_step(step, th):
            tick()
            if step % 10 == 9 and th is not None:
                snaps.append((th.detach() + torch.where(mask, 0.0, -1e9)).argmax(-1))

        secs = None if relax_budget is None else (relax_budget - clock.elapsed()) / (cfg.restarts - r)
        if backend == "jax":
            from featviz.backends.jax.relax import relax_jax
            theta, trace, _ = relax_jax(
                handle, joint, theta, mask, lam, cap, steps=cfg.steps, seconds=secs, lr=cfg.lr,
                tau0=cfg.tau0, tau1=cfg.tau1, hard=cfg.straight_through, seed=cfg.seed * 1009 + r,
                prefix_ids=[handle.bos_id] + list(tokens.prefix), suffix_ids=list(tokens.suffix),
                on_step=on_step, precision=cfg.precision)
            theta = theta.to(dev)
        else:
            with searches[0].autocast:
                trace = relax(handle, joint, theta, mask, lam, cap, steps=cfg.steps, seconds=secs,
                              lr=cfg.lr, tau0=cfg.tau0, tau1=cfg.tau1, hard=cfg.straight_through,
                              generator=searches[0].gen, make_embeds=embeds, start=tokens.start,
                              on_step=on_step)
        for i, s in enumerate(searches):
            part = slice(i * B, (i + 1) * B)
            s.discretize(theta[part], [sn[part] for sn in snaps], trace)
    joint_seconds = time.perf_counter() - t_relax
    for s in searches:
        s.stats["seconds"]["init"] = t_init / K
        s.stats["seconds"]["relax"] = (joint_seconds - t_init) / K     # + discretization
        if K > 1:
            s.stats["batched_targets"] = K
    if any(not s.archive.entries for s in searches):
        bar.close()
        raise FeatvizError("no round-trip-stable candidate was found; try --vocab ascii or a "
                           "longer budget")

    # ---- stages 4-5 per target, each with an equal share of what is left ----
    results = []
    for i, s in enumerate(searches):
        t_own = time.perf_counter()
        share = Clock(None if total is None else (total - clock.elapsed()) / (K - i))
        # kept for verification: ~32 rows scored in float32 (with headroom), at the rate measured at init
        reserve = 0.0 if total is None else max(0.02 * cfg.budget_seconds, 48 * s.row_seconds)
        s.refine(share, reserve, budgeted=total is not None)
        results.append(s.report(user_cfg, backend,
                                joint_seconds / K + time.perf_counter() - t_own))
    bar.close()
    return results

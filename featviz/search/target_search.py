"""One target's search state through the stages: archive, population, rotation queue,
stats.  Each stage that needs the model is a generator that yields its forward passes as
requests (``search.lockstep``), so a group of searches runs them batched; the state, the
random draws and every decision stay per target."""
from __future__ import annotations

import math
import time

import torch

from featviz.backends.choose import scorer
from featviz.backends.objective import needs_fluency, weighs_fluency
from featviz.model.precision import SearchArithmetic
from featviz.model.tokens import Tokens
from featviz.search.archive import Archive
from featviz.search.budget import Clock, weight_copies_fit
from featviz.search.config import DreamConfig
from featviz.search.init import init_ids
from featviz.search.lockstep import Beam, Evaluate, Grads, Sample, Sweep, Verify
from featviz.search.moves import crossover, novel, propose, rotations
from featviz.search.population import (
    Population,
    focus_rows,
    population,
    row_params,
    scores_for_rows,
    stable_unique,
    stable_unique_index,
)
from featviz.search.result import DreamResult
from featviz.search.verify import UNSCORED_XE, assemble_frontier, frontier_keys
from featviz.targets.core import Target

XE_PER_ROW = 2   # act_only: swap children per row and iteration whose xe the search computes
                 # (the strongest by activation; the rest wait for verification)


class TargetSearch:
    """One target's search: its archive, population, rotation queue and stats.  Its
    stages (``start``, ``discretize``, ``refine``, ``report``) are generators of
    ``search.lockstep`` requests; ``lockstep.drive`` runs them, alone or in a group."""

    def __init__(self, handle, target: Target, cfg: DreamConfig, tokens: Tokens, mask, tick,
                 backend: str = "torch"):
        self.h, self.target, self.cfg, self.tokens, self.mask, self.tick = (
            handle, target, cfg, tokens, mask, tick)
        self.dev = handle.device
        self.gen = torch.Generator(device=self.dev).manual_seed(cfg.seed)   # draws on the model's device
        self.lam, self.cap = row_params(cfg, self.dev)
        self.B, self.n = len(self.lam), cfg.length
        self.archive = Archive()
        self.stats = {"relax_steps": 0, "swap_iters": 0, "seconds": {}}
        self.soft_trace = []
        self.arithmetic = SearchArithmetic(handle, cfg.precision == "bf16",
                                           keep_copies=weight_copies_fit(handle, cfg))
        self.scorer = scorer(backend, handle, target, tokens, cfg.length, cfg.precision,
                             self.arithmetic)      # the backend's exact scoring (the JAX
                                                   # backend's requests are served by it)
        self.relax_top = None   # the last relaxation's top tokens per row and position
        self.pending_rot = []   # rotation candidates waiting for the next scoring round
        self.row_seconds = 0.0  # measured seconds per exactly scored row
        self.scored_seconds, self.scored_rows = 0.0, 0
        self.mark = 0           # the swap iteration (lockstep.drive keeps a group together by it)
        self.last_only = all(a.reduction == "last" for _, a in target.terms())
        self.rotating = self.last_only and cfg.swaps.rotate > 0      # rotate: 0 turns rotations off,
                                                               # not the last-position sweep
        # no row weighs fluency (the raw mode): swap children are scored for activation
        # alone, their forward stopping after the target's layer as GCG's does; only the
        # strongest few get their xe (XE_PER_ROW), and verification computes it for the
        # strongest of the rest
        self.act_only = not needs_fluency(self.lam, self.cap)

    # -- archive bookkeeping --
    def note_rotations(self, ids, per, floor):
        if self.rotating and len(ids):
            self.pending_rot.append(rotations(ids, per, floor, self.cfg.swaps.rotate))

    def take_rotations(self):
        if not self.pending_rot:
            return None
        out = torch.cat(self.pending_rot)
        self.pending_rot.clear()
        return out

    def score_into_archive(self, cands):
        cands = stable_unique(self.tokens, cands, self.archive)
        if len(cands):
            t = time.perf_counter()
            a, x, per = yield Evaluate(cands)
            # seconds per exactly scored row (activation + xe), over all rows scored so far
            # (small batches' fixed costs averaged in; in a group, the group's pass): what
            # budgets are planned by
            self.scored_seconds += time.perf_counter() - t
            self.scored_rows += len(cands)
            self.row_seconds = self.scored_seconds / self.scored_rows
            self.archive.add(cands, a.float(), x.float())
            self.note_rotations(cands, per.float(), float(a.float().max()) * 0.5)

    # -- stage 1: init (model samples, LM-guided beams, rotations) --
    def start(self, r: int, deadline: float | None = None):
        """Scores this restart's initial sequences; returns each row's start, or None.
        ``deadline`` (perf_counter): no beam search starts after it, and one running then
        is completed greedily."""
        cfg, tokens = self.cfg, self.tokens
        # the initial sequences come in chunks, so a slow machine stops at the deadline
        # with fewer of them instead of overrunning it (at least one chunk always runs)
        want, done = max(self.B, cfg.start.init_samples), 0
        while done < want and (done == 0 or deadline is None
                               or time.perf_counter() < deadline):
            chunk = min(want - done, max(self.B, 16))
            ids = (yield Sample(chunk)) if cfg.start.init == "model" else \
                init_ids(self.h, cfg, tokens, self.mask, self.gen, chunk)
            yield from self.score_into_archive(ids)
            done += chunk
        self.stats["init_samples"] = done
        if cfg.start.init == "model" and not tokens.suffix:
            for j, bl in enumerate(cfg.start.beam_lams):
                if deadline is not None and time.perf_counter() > deadline:
                    self.stats["beams_skipped"] = len(cfg.start.beam_lams) - j
                    break
                bids, _, _ = yield Beam(float(bl), (r + j) > 0, deadline)
                yield from self.score_into_archive(bids)
                self.tick()
        rot = self.take_rotations()
        if rot is not None:
            yield from self.score_into_archive(rot)
        if not self.archive.entries:
            return None
        return population(self.archive, self.lam, self.cap, self.dev, self.cfg.rows.distinct)

    # -- stage 3: discretize: the relaxation's hard samples, argmax snapshots, draws from theta --
    def discretize(self, theta, snaps, trace, samples=()):
        """Archive the relaxation's scored hard samples (``samples``: per step (ids, act,
        xe), this target's rows; no forward pass needed), then score the argmax of theta,
        its snapshots and ``hard_samples`` draws per row from it."""
        self.stats["relax_steps"] += trace.steps
        self.stats["relax_resets"] = self.stats.get("relax_resets", 0) + trace.resets
        self.soft_trace.append({"soft_act": trace.soft_act, "soft_xe": trace.soft_xe})
        if samples:
            self.archive_scored(*(torch.cat(part) for part in zip(*samples)))
        logits = torch.nan_to_num(theta + torch.where(self.mask, 0.0, -1e9), nan=-1e9)
        cands = [logits.argmax(-1)] + snaps
        self.relax_top = logits.topk(min(self.cfg.swaps.k_relax, int(self.mask.sum())), -1).indices
        rot = self.take_rotations()
        if rot is not None:
            cands.append(rot)
        p = torch.softmax(logits, -1).reshape(self.B * self.n, -1)
        if not torch.isfinite(p).all():           # the relaxation overflowed: keep argmaxes only
            self.stats["relax_nonfinite"] = True
        elif self.cfg.relax.hard_samples:
            s = torch.multinomial(p, self.cfg.relax.hard_samples, replacement=True, generator=self.gen)
            cands.append(s.reshape(self.B, self.n, -1).permute(0, 2, 1).reshape(-1, self.n))
        yield from self.score_into_archive(torch.cat(cands))

    def archive_scored(self, ids, act, xe) -> None:
        """Archive candidates scored elsewhere (the relaxation's hard samples): the first
        of each distinct row, if new and round-trip stable."""
        keep = torch.tensor(stable_unique_index(self.tokens, ids, self.archive), dtype=torch.long)
        if len(keep):
            self.archive.add(ids[keep].to(self.dev), act[keep], xe[keep])
            self.stats["relax_samples_kept"] = self.stats.get("relax_samples_kept", 0) + len(keep)

    # -- stage 4: gradient- and LM-guided swaps, scored exactly --
    def verify_reserve(self, floor: float) -> float:
        """Seconds kept for the report's verification: ~32 rows scored in float32 (with
        headroom; plus the strongest children whose xe is still unknown), at the rate
        measured at init, and at least ``floor``."""
        return max(floor, (48 + (UNSCORED_XE if self.act_only else 0)) * self.row_seconds)

    def swap_plan(self) -> dict:
        """What each swap iteration does: the last-position sweep's size, the share of
        children whose xe is computed (below 1: activation first, for all of them), each
        row's share of LM-guided swaps, and a first guess of a full iteration's seconds
        (from the scoring rate measured at init, with headroom)."""
        cfg, B = self.cfg, self.B
        depth = (self.target.depth(self.h) + 1) / self.h.n_layers
        sweep = cfg.swaps.sweep if cfg.swaps.sweep is not None else int(min(2048, max(192, 1500 / (B * depth))))
        sweep = min(sweep, int(self.mask.sum()))
        # rows that weigh fluency draw lm_share of their swaps from the model's own top
        # tokens; a pure-activation row (lambda 0, no cap) only gradient swaps, as GCG
        lm_rows = torch.where(weighs_fluency(self.lam, self.cap), cfg.swaps.lm_share, 0.0)
        guess = self.row_seconds * (B * (cfg.swaps.children + 4) + cfg.swaps.crossover
                                    + B * sweep * depth / 4) * 1.5
        # xe for every child, or (shallow targets, whose activation costs a small part of a
        # full forward) for the best xe_share of them by activation, or (act_only, 0 here)
        # for the best XE_PER_ROW per row
        xe_share = 0.0 if self.act_only else cfg.swaps.xe_share if depth < 0.5 else 1.0
        return {"sweep": sweep, "xe_share": min(1.0, xe_share), "lm_rows": lm_rows,
                "guess": guess}

    def refine(self, clock: "Clock", reserve: float, budgeted: bool):
        """Swap iterations until the step count or the clock says stop.  The next iteration
        must fit the budget: when less than a full one is left, a smaller one runs (fewer
        children and sweep tokens, in proportion)."""
        plan = self.swap_plan()
        self.stats["sweep"], self.stats["children_xe"] = plan["sweep"], plan["xe_share"]
        self.stats["two_stage"] = plan["xe_share"] < 1
        pop = Population.from_archive(self.archive, self.lam, self.cap, self.dev,
                                      self.cfg.rows.distinct)
        t_swap = time.perf_counter()
        longest, it = plan["guess"], 0          # seconds of the longest full iteration
        while budgeted or it < self.cfg.swaps.swap_iters:
            left = clock.left() - reserve
            frac = 1.0 if not longest or left >= longest else left / longest
            if left <= 0 or frac < 0.05:
                break
            t_it = time.perf_counter()
            # the share of the swap stage behind us (by the clock, or by iterations)
            spent = t_it - t_swap
            share = spent / (spent + left) if budgeted else it / self.cfg.swaps.swap_iters
            halvings = sum(share >= f for f in self.cfg.swaps.focus)
            self.mark = it + 1
            pop = yield from self.iterate(pop, plan, frac, halvings)
            dt = (time.perf_counter() - t_it) / frac          # what a full one would take
            longest = max(longest, dt) if it else dt
            it += 1
            if frac < 1.0:
                self.stats["last_iter_fraction"] = round(frac, 3)
            self.tick()
        self.stats["swap_iters"] = it
        self.stats["seconds"]["swaps"] = time.perf_counter() - t_swap

    def iterate(self, pop: Population, plan: dict, frac: float,
                halvings: int = 0) -> Population:
        """One swap iteration at ``frac`` of its full size: propose children from the
        gradient and the model's top tokens, sweep the last position, add rotations and
        crossovers, score them all exactly and keep each row's best.  After ``halvings``
        rounds of successive halving (``focus``) only the rows ``focus_rows`` keeps
        propose children (as many in all) and sweep."""
        cfg = self.cfg
        sweep = max(1, int(plan["sweep"] * frac)) if plan["sweep"] else 0
        on = focus_rows(pop.act, self.lam, self.cap, halvings, cfg.swaps.focus_by, pop.xe,
                        pop.ids, cfg.xe_cap)
        self.stats["focus_rows"] = len(on)
        children = max(1, int(cfg.swaps.children * frac * self.B / len(on)))
        grad, lm = yield Grads(pop.ids[on], self.lam[on], self.cap[on])
        kids = propose(pop.ids[on], grad.float(), lm.float(), self.mask,
                       children * cfg.swaps.redraw, cfg.swaps.k_grad, cfg.swaps.k_lm,
                       plan["lm_rows"][on], self.gen,
                       relax_top=None if self.relax_top is None else self.relax_top[on],
                       relax_share=cfg.swaps.relax_share)
        if cfg.swaps.redraw > 1:
            kids = novel(kids, len(on), children, self.archive)
        if sweep and self.last_only and not self.tokens.suffix:
            pop = yield from self.sweep(pop, grad, lm, sweep, on)
        rot = self.take_rotations()
        if rot is not None:
            kids = torch.cat([rot, kids])
        if cfg.swaps.crossover:
            kids = torch.cat([crossover(pop.ids, pop.act, pop.xe,
                                        max(1, int(cfg.swaps.crossover * frac)), 4, self.gen), kids])
        kids = stable_unique(self.tokens, kids, self.archive)
        return (yield from self.score_children(pop, kids, plan["xe_share"]))

    def sweep(self, pop: Population, grad, lm, sweep: int, on: torch.Tensor) -> Population:
        """Each row ``on`` (``grad``, ``lm``: theirs) tries ``sweep`` tokens at its last
        position (one KV-cache pass); the best few per row, and overall, are archived and
        merged."""
        cfg, lam, cap, dev = self.cfg, self.lam, self.cap, self.dev
        sk, sa, sdx = yield Sweep(pop.ids[on], grad, lm, sweep)
        # every last-token variant is scored; only the best few are archived (evaluated)
        self.stats["sweep_scored"] = self.stats.get("sweep_scored", 0) + len(sa)
        sa = torch.nan_to_num(sa.float(), nan=-math.inf)
        sx = pop.xe[on].repeat_interleave(sweep) + sdx
        rows = scores_for_rows(sa, sx, lam[on], cap[on])       # (len(on), len(on)*sweep)
        own = torch.arange(len(on), device=dev).repeat_interleave(sweep)
        rows = torch.where(own[None] == torch.arange(len(on), device=dev)[:, None], rows,
                           -math.inf)
        pick = rows.topk(min(cfg.swaps.sweep_keep, sweep), dim=1).indices.flatten()
        pick = torch.unique(torch.cat([pick, sa.topk(min(cfg.swaps.sweep_keep, len(sa))).indices]))
        sk, sa, sx = sk[pick], sa[pick], sx[pick]
        rows = sk.tolist()
        good = self.tokens.stable_many(rows)
        ok = [i for i, row in enumerate(rows) if tuple(row) not in self.archive and good[i]]
        if not ok:
            return pop
        sk, sa, sx = sk[ok], sa[ok], sx[ok]
        self.archive.add(sk, sa, sx)
        return pop.merge(sk, sa, sx, lam, cap, cfg.rows.distinct)

    def score_children(self, pop: Population, kids, xe_share: float) -> Population:
        """Score children exactly and merge them.  With ``xe_share`` below 1, two stages:
        activation for all, then xe only for the strongest: the best ``xe_share`` of them
        by activation, or (``act_only``, no row weighs fluency) the best ``XE_PER_ROW``
        per row, which keeps the frontier dense where the search passes.  Where a row
        weighs fluency only those are merged; in ``act_only`` all are (activation is every
        row's whole score), the others' xe unknown (+inf) until verification."""
        cfg, archive = self.cfg, self.archive
        floor = float(pop.act.max())
        rest = None
        if len(kids) and xe_share < 1:
            ka, _, per = yield Evaluate(kids, with_xe=False)
            ka = ka.float()
            self.note_rotations(kids, per.float(), floor)
            m = XE_PER_ROW * self.B if self.act_only else math.ceil(xe_share * len(kids))
            m = max(1, min(m, len(kids)))
            order = torch.argsort(torch.nan_to_num(ka, nan=-math.inf), descending=True)
            rest = (kids[order[m:]], ka[order[m:]], torch.full_like(ka[order[m:]], math.inf))
            archive.add(*rest)
            kids = kids[order[:m]]
        if not len(kids):
            return pop
        ka, kx, per = yield Evaluate(kids)
        ka, kx = ka.float(), kx.float()
        archive.add(kids, ka, kx)
        if xe_share >= 1:
            self.note_rotations(kids, per.float(), floor)
        if self.act_only and rest is not None:
            kids, ka, kx = (torch.cat([a, b]) for a, b in zip((kids, ka, kx), rest))
        return pop.merge(kids, ka, kx, self.lam, self.cap, cfg.rows.distinct)

    # -- stage 5: report only what a fresh pass computes on re-encoded text --
    def report(self, user_cfg: DreamConfig, backend: str, seconds: float) -> DreamResult:
        cfg, target, handle = self.cfg, self.target, self.h
        t_ver = time.perf_counter()
        self.mark = math.inf                       # verified after every search's swaps
        limits = [float(c) for c in tuple(cfg.rows.caps) + (cfg.xe_cap, math.inf)]
        front, few = frontier_keys(self.archive, limits,
                                   slack=0.0 if cfg.precision == "fp32" else 0.25)  # bf16 xe
        checked = yield Verify(front + [k for keys in few for k in keys])  # may differ a little
        frontier, n_verified = assemble_frontier(checked, front, few, limits), len(checked)

        def best_under(limit):
            ok = [c for c in frontier if c.xe <= limit]
            return max(ok, key=lambda c: c.activation) if ok else None

        stats = self.stats
        stats["seconds"]["verify"] = time.perf_counter() - t_ver
        stats["seconds"]["total"] = seconds + stats["seconds"]["verify"]
        stats.update(evaluated=self.archive.evaluated, soft_trace=self.soft_trace,
                     backend=backend, precision=cfg.precision,
                     diverged=not any(math.isfinite(a) for a, _ in self.archive.entries.values()),
                     verified=n_verified,
                     shape={"length": self.n, "prefix": len(self.tokens.prefix),
                            "suffix": len(self.tokens.suffix)})
        cfg_json = user_cfg.flat()
        cfg_json.pop("corpus_init", None)
        return DreamResult(target=str(target), target_description=target.describe(handle),
                           model=handle.name, config=cfg_json, frontier=frontier,
                           best=best_under(math.inf), best_fluent=best_under(cfg.xe_cap),
                           best_at={float(c): best_under(float(c)) for c in cfg.rows.caps},
                           stats=stats)

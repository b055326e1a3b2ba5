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
searches in lockstep (``search.lockstep``): every stage's forward passes (model samples,
beams, the relaxation, swap children, the sweep, verification) run for all targets in one
batch, each row reading its own target.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from featviz.backends.choose import relaxer, resolve_backend, resolve_precision
from featviz.backends.schedule import RelaxSettings
from featviz.errors import FeatvizError
from featviz.model.tokens import Tokens
from featviz.model.vocab import readable_mask
from featviz.search.budget import Clock, check_memory, fit_budget
from featviz.search.config import DreamConfig
from featviz.search.lockstep import Server, drive
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
    """Dream several targets in one batch: every stage runs for all of them at once, target
    i owning rows i*batch .. (i+1)*batch-1 of the relaxation and its own rows of every
    scoring pass (``PerRow``).  Each target keeps its own state and random generator, so on
    the torch backend its result is what ``dream`` computes for it alone under the same
    step counts and seed.  ``budget_seconds`` is per target (the run takes about
    len(targets) times it)."""
    run = _Run.prepare(handle, targets, config, progress)
    searches = [TargetSearch(handle, t, run.cfg, run.tokens, run.mask, run.tick, run.backend)
                for t in run.targets]
    try:
        run.init_relax_harden(searches)                  # stages 1-3
        return run.refine_and_report(searches)           # stages 4-5
    finally:
        run.bar.close()


DREAM_ERRORS = (FeatvizError, RuntimeError, ValueError, FloatingPointError)


def dream_group(handle, group: list, config: DreamConfig | None) -> list:
    """[(DreamResult or None, error line or None)] per target, for callers that write
    many targets (galleries, comparisons).  The group shares one relaxation
    (``dream_many``); when that fails, each target is dreamt alone so one bad target does
    not take its neighbours down.  ``config`` None: no dreaming (all (None, None))."""
    if config is None:
        return [(None, None)] * len(group)
    if len(group) > 1:
        try:
            return [(r, None) for r in dream_many(handle, group, config, progress=False)]
        except DREAM_ERRORS:
            pass
    out = []
    for t in group:
        try:
            out.append((dream(handle, t, config, progress=False), None))
        except DREAM_ERRORS as e:
            line = str(e).splitlines()[0] if str(e) else type(e).__name__
            out.append((None, f"dreaming failed: {line}"))
    return out


@dataclass
class _Run:
    """What one ``dream_many`` call shares across its targets: the resolved config, the
    sequence layout, the readable vocabulary, the backend, the clock and the progress bar."""

    handle: object
    targets: list
    cfg: DreamConfig           # resolved: precision chosen, init shrunk for short budgets
    user_cfg: DreamConfig      # as given (what results record)
    tokens: Tokens
    mask: torch.Tensor
    backend: str
    total: float | None        # the whole run's budget (per target x targets)
    clock: Clock
    bar: object
    server: Server
    joint_seconds: float = 0.0

    @classmethod
    def prepare(cls, handle, targets, config, progress) -> "_Run":
        cfg = (config or DreamConfig()).check()
        targets = [as_target(t, handle) for t in targets]
        if not targets:
            raise FeatvizError("dream_many needs at least one target")
        K, B = len(targets), cfg.rows.batch
        total = None if cfg.budget_seconds is None else cfg.budget_seconds * K
        torch.manual_seed(cfg.seed)
        mask = readable_mask(handle, cfg.vocab)
        tokens = Tokens(handle, handle.encode(cfg.prefix) if cfg.prefix else [],
                        handle.encode(cfg.suffix) if cfg.suffix else [])
        for t in targets:         # a position or key the dream's sequences lack: say so now
            t.check_length(tokens.start + cfg.length + len(tokens.suffix),
                           (tokens.start, tokens.start + cfg.length))
        check_memory(handle, targets[0] if K == 1 else cls.joint_of(targets, B), cfg, K * B)
        backend = resolve_backend(handle, cfg.backend)
        resolved = fit_budget(cfg.replace(precision=resolve_precision(handle, cfg.precision)),
                              B)
        bar = tqdm(total=total or (resolved.relax.steps * resolved.relax.restarts + resolved.swaps.swap_iters * K),
                   desc=f"dreaming {targets[0]}" if K == 1 else f"dreaming {K} targets",
                   disable=not progress, leave=False, unit="s" if total else "step")
        return cls(handle, targets, resolved, cfg, tokens, mask, backend, total, Clock(total), bar,
                   Server(handle, tokens, mask, resolved, backend))

    @staticmethod
    def joint_of(targets, B: int):
        """One target for the whole relaxation batch: row r reads targets[r // B]."""
        if len(targets) == 1:
            return targets[0]
        return PerRow(tuple(targets), tuple(i for i in range(len(targets)) for _ in range(B)))

    def tick(self, k: int = 1) -> None:
        if self.total:
            self.bar.n = min(round(self.clock.elapsed(), 1), self.total)
            self.bar.refresh()
        else:
            self.bar.update(k)

    # ---- stages 1-3: per-target init, one shared relaxation, per-target discretization ----
    def init_relax_harden(self, searches) -> None:
        cfg, K = self.cfg, len(searches)
        B = searches[0].B
        # each restart's relaxation runs for its own share of the budget, after its init
        relax_share = None if self.total is None else \
            self.total * cfg.relax.relax_fraction / cfg.relax.restarts
        stages_end = None if self.total is None else \
            self.total * (cfg.start.init_fraction + cfg.relax.relax_fraction)
        settings = RelaxSettings(cfg.relax.steps, cfg.relax.lr, cfg.relax.tau0, cfg.relax.tau1,
                                 cfg.relax.straight_through, cfg.seed, cfg.precision,
                                 cfg.relax.init_scale, cfg.relax.reset_patience,
                                 cfg.relax.lm_topk, cfg.relax.sparse_k, cfg.relax.simplex)
        relax = relaxer(self.backend, self.handle, self.joint_of(self.targets, B), self.mask,
                        self.tokens, settings, [s.gen for s in searches], searches[0].arithmetic)
        lam = torch.cat([s.lam for s in searches])
        cap = torch.cat([s.cap for s in searches])
        t_relax, t_init = time.perf_counter(), 0.0
        for r in range(cfg.relax.restarts):
            if r > 0 and stages_end is not None and self.clock.elapsed() >= stages_end:
                break
            t = time.perf_counter()
            deadline = self.init_deadline()
            inits = drive(self.server, [(s, s.start(r, deadline)) for s in searches])
            t_init += time.perf_counter() - t
            if all(i is None for i in inits) or cfg.relax.steps == 0 or cfg.relax.relax_fraction == 0:
                continue
            theta = torch.zeros(K * B, cfg.length, self.handle.vocab_size,
                                device=self.handle.device)
            for i, init in enumerate(inits):
                if init is not None:
                    theta[i * B:(i + 1) * B].scatter_(-1, init[..., None], cfg.relax.init_scale)
            snaps = []

            def on_step(step, th):
                self.tick()
                if step % 10 == 9 and th is not None:       # argmax snapshots to harden
                    snaps.append((th.detach() + torch.where(self.mask, 0.0, -1e9)).argmax(-1))

            theta, trace = relax(theta, lam, cap, seconds=relax_share, restart=r, on_step=on_step)
            parts = [slice(i * B, (i + 1) * B) for i in range(K)]
            drive(self.server, [(s, s.discretize(theta[p], [sn[p] for sn in snaps], trace,
                                                 [(i[p], a[p], x[p]) for i, a, x in trace.samples]))
                                for s, p in zip(searches, parts)])
        self.joint_seconds = time.perf_counter() - t_relax
        for s in searches:
            s.stats["relax_fraction"] = cfg.relax.relax_fraction     # as the budget resolved it
            s.stats["seconds"]["init"] = t_init / K
            s.stats["seconds"]["relax"] = (self.joint_seconds - t_init) / K  # + discretization
            if K > 1:
                s.stats["batched_targets"] = K
        if any(not s.archive.entries for s in searches):
            raise FeatvizError("no round-trip-stable candidate was found; try --vocab ascii "
                               "or a longer budget")

    def init_deadline(self) -> float | None:
        """When this restart's init must end for all targets (perf_counter; each target's
        share, the targets running together), or None without a budget."""
        cfg = self.cfg
        if self.total is None:
            return None
        return time.perf_counter() + self.total * cfg.start.init_fraction / cfg.relax.restarts

    # ---- stages 4-5, all targets together on what is left of the run's budget ----
    def refine_and_report(self, searches) -> list[DreamResult]:
        K, total, cfg = len(searches), self.total, self.cfg
        t_own = time.perf_counter()
        clock = Clock(None if total is None else total - self.clock.elapsed())
        # kept for verification (``TargetSearch.verify_reserve``; in a group, at the
        # group's rate, which verifies all its targets)
        reserve = [0.0 if total is None else s.verify_reserve(0.02 * cfg.budget_seconds * K)
                   for s in searches]

        def stages(s, reserve):
            yield from s.refine(clock, reserve, budgeted=total is not None)
            return (yield from s.report(self.user_cfg, self.backend,
                                        (self.joint_seconds + time.perf_counter() - t_own) / K))
        return drive(self.server, [(s, stages(s, r)) for s, r in zip(searches, reserve)])

"""Dreaming: find readable text that drives a target as high as it can go.

One config dataclass, one run function, one result dataclass (the nanoGCG shape):

    from featviz.dream import DreamConfig, dream, dream_many
    result = dream(handle, "mlp:12:345", DreamConfig(budget_seconds=60))
    results = dream_many(handle, ["mlp:6:1", "mlp:6:2"], DreamConfig(budget_seconds=60))

Stages: model-sampled (or random) init -> Gumbel-softmax relaxation over the
readable vocabulary with one lambda (or xe cap) per row -> hard tokens sampled from
the relaxed logits -> gradient- and LM-guided single-token swaps scored exactly ->
round-trip check -> every reported number recomputed on the re-encoded text.
``_Search`` holds one target's state through these stages; ``dream_many`` runs several
searches with the relaxation shared (each batch row reading its own target).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

import torch
from tqdm.auto import tqdm

from .discretize import (Archive, Tokens, crossover, evaluate, onehot_grads, propose,
                         rotations, select, select_index, sweep_last)
from .errors import FeatvizError
from .objective import combine, exact_scores, lambdas
from .beam import beam_search
from .relax import relax, sample_from_model
from .targets import PerRow, Target, as_target
from .vocab import readable_mask


@dataclass
class DreamConfig:
    length: int = 12                # optimised tokens after BOS (+ prefix)
    batch: int = 8                  # population rows, one lambda or xe cap each
    seed: int = 0
    budget_seconds: float | None = None   # wall clock for everything; None: use step counts
    steps: int = 60                 # relaxation steps (upper bound when a budget is set)
    swap_iters: int = 40            # swap iterations (upper bound when a budget is set)
    relax_fraction: float = 0.2     # share of the budget for the relaxation
    init_fraction: float = 0.25     # the init (model samples, beams) ends by this share of
                                    # the budget: later beams are skipped, a late one completed
                                    # greedily
    restarts: int = 1               # independent relaxations (each with a fresh init)
    init: str = "model"             # "model" | "random" | "corpus"
    init_samples: int = 64          # initial sequences scored before choosing each row's start
    beam_lams: tuple = (0.1, 0.3)   # LM-guided beam searches at init (one per lambda; () = none)
    beam_width: int = 8
    beam_expand: int = 48           # the model's top-k next tokens tried per beam and step
    precision: str = "auto"         # search arithmetic: "bf16" (autocast), "fp32", or "auto":
                                    # bf16 where the device has fast bfloat16 (see
                                    # fast_bf16), else fp32; reports are always fp32
    init_scale: float = 3.0         # theta = init_scale * one-hot(init) at start
    lr: float = 0.3
    tau0: float = 2.0
    tau1: float = 0.2
    straight_through: bool = True
    hard_samples: int = 16          # hard samples per row drawn from the final theta
    lam_min: float = 0.05
    lam_max: float = 1.0
    caps: tuple = (5.0, 6.0, 6.5)   # epsilon-constraint rows (best activation under xe cap)
    xe_cap: float = 6.5             # what "fluent" means in the report
    children: int = 24              # swap children per parent and iteration
    k_grad: int = 64
    k_lm: int = 48
    lm_share: float = 0.5           # share of swaps drawn from the model's own top tokens
    sweep: int | None = None        # tokens tried at the last position per row and iteration
                                    # (None: as many as ~1500 token-layers of compute allow)
    sweep_keep: int = 8             # of those, kept per row (best by the row's score)
    distinct: int = 0               # population rows differ in at least this many tokens
                                    # (0: each row takes its best, duplicates allowed)
    crossover: int = 16             # head-of-fluent + tail-of-strong children per iteration
    rotate: int = 8                 # rotation moves per iteration (last-position targets)
    xe_share: float = 0.35          # two-stage scoring: fluency only for the best children by
                                    # activation (used when the target sits in the lower layers)
    vocab: str = "ascii"            # "ascii" | "all"
    prefix: str = ""
    suffix: str = ""
    corpus_init: list = field(default_factory=list)   # token id rows for init="corpus"
    memory_gb: float | None = None  # memory the search may use (None: what the OS says is free)
    backend: str = "torch"          # "torch" | "jax" | "auto" (JAX where the architecture is
                                    # supported): the relaxation and the swap scoring run on it;
                                    # the last-position sweep and the reports run in torch

    def check(self) -> "DreamConfig":
        def bad(msg):
            raise FeatvizError(msg)
        if not isinstance(self.length, int) or self.length < 1:
            bad(f"--length must be at least 1, got {self.length}")
        if self.batch < 1:
            bad(f"--batch must be at least 1, got {self.batch}")
        if self.steps < 0 or self.swap_iters < 0:
            bad("--steps and --swap-iters must not be negative")
        if self.budget_seconds is not None and not self.budget_seconds > 0:
            bad(f"--budget-seconds must be positive, got {self.budget_seconds}")
        if self.init not in ("model", "random", "corpus"):
            bad(f"--init must be model, random or corpus, got '{self.init}'")
        if self.init == "corpus" and not self.corpus_init:
            bad("--init corpus needs corpus windows to start from")
        if self.init == "corpus" and any(len(r) < self.length for r in self.corpus_init):
            bad(f"every corpus_init row needs at least --length {self.length} tokens; the "
                f"shortest has {min(len(r) for r in self.corpus_init)}")
        if not 0 <= self.relax_fraction <= 1:
            bad("relax_fraction must lie in [0, 1]")
        if not 0 < self.init_fraction <= 1:
            bad("init_fraction must lie in (0, 1]")
        if self.tau0 <= 0 or self.tau1 <= 0:
            bad("temperatures must be positive")
        if self.precision not in ("auto", "bf16", "fp32"):
            bad(f"precision must be auto, bf16 or fp32, got '{self.precision}'")
        if any(not isinstance(x, (int, float)) or x < 0 for x in self.beam_lams):
            bad("beam_lams must be non-negative numbers")
        if self.init_samples < 1:
            bad("init_samples must be at least 1")
        if self.vocab not in ("ascii", "all"):
            bad(f"vocab must be ascii or all, got '{self.vocab}'")
        if self.sweep is not None and self.sweep < 0:
            bad("sweep must not be negative")
        if not isinstance(self.distinct, int) or not 0 <= self.distinct <= self.length:
            bad(f"distinct must be an integer in [0, --length], got {self.distinct}")
        if self.children < 1 or self.k_grad < 1 or self.k_lm < 1:
            bad("children, k_grad and k_lm must be at least 1")
        if self.backend not in ("torch", "jax", "auto"):
            bad(f"--backend must be auto, jax or torch, got '{self.backend}'")
        if self.memory_gb is not None and not self.memory_gb > 0:
            bad(f"memory_gb must be positive, got {self.memory_gb}")
        return self


@dataclass
class Candidate:
    text: str
    token_ids: list
    tokens: list
    activation: float
    xe: float

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class DreamResult:
    target: str
    target_description: str
    model: str
    config: dict
    frontier: list            # Candidate, xe ascending (the activation-vs-fluency frontier)
    best: Candidate | None    # highest activation at any fluency
    best_fluent: Candidate | None   # highest activation with xe <= config.xe_cap
    best_at: dict             # cap -> Candidate | None, for config.caps
    stats: dict

    @property
    def shape(self) -> dict:
        """The scored sequences' shape: optimised tokens and the fixed prefix / suffix
        tokens around them (BOS aside), as ``exemplars.corpus_reference`` takes it."""
        if "shape" not in self.stats:            # a result built by hand (no search stats)
            if self.config.get("prefix") or self.config.get("suffix"):
                raise FeatvizError("this DreamResult has no stats['shape']; the prefix and "
                                   "suffix token counts are needed for a corpus figure")
            return {"length": int(self.config.get("length", 12)), "prefix": 0, "suffix": 0}
        return dict(self.stats["shape"])

    def to_json(self) -> dict:
        c = lambda x: None if x is None else x.to_json()  # noqa: E731
        return {"target": self.target, "target_description": self.target_description,
                "model": self.model, "config": self.config,
                "frontier": [f.to_json() for f in self.frontier], "best": c(self.best),
                "best_fluent": c(self.best_fluent),
                "best_at": {str(k): c(v) for k, v in self.best_at.items()}, "stats": self.stats}


class _Clock:
    def __init__(self, budget):
        self.t0 = time.perf_counter()
        self.budget = budget

    def elapsed(self):
        return time.perf_counter() - self.t0

    def left(self):
        return math.inf if self.budget is None else self.budget - self.elapsed()


def _row_params(cfg: DreamConfig, device):
    caps = [float(c) for c in cfg.caps][: cfg.batch]
    lam = lambdas(cfg.batch - len(caps), cfg.lam_min, cfg.lam_max, include_zero=True)
    lam_t = torch.tensor([0.0] * len(caps) + lam, device=device)
    cap_t = torch.tensor(caps + [math.inf] * len(lam), device=device)
    return lam_t, cap_t


def _stable_unique(tokens: Tokens, ids: torch.Tensor, archive: Archive | None = None):
    keep, seen = [], set()
    for i, row in enumerate(ids.tolist()):
        key = tuple(row)
        if key in seen or (archive is not None and key in archive):
            continue
        seen.add(key)
        if tokens.stable(row):
            keep.append(i)
    return ids[keep]


def available_memory(device=None) -> int | None:
    """Bytes free on a CUDA device, else what the OS reports as available (Linux
    /proc/meminfo); None when unknown."""
    if device is not None and torch.device(device).type == "cuda":
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def search_memory(handle, target: Target, cfg: DreamConfig, B: int) -> int:
    """Peak bytes the search needs, roughly: the relaxation's logits over the vocabulary
    (theta, its gradient, Adam's two moments, the Gumbel samples and the soft-xe logits)
    plus the activations kept for the backward pass, and the swap stage's scoring batch."""
    V, d, f = handle.vocab_size, handle.d_model, handle.d_mlp
    T = cfg.length + 1 + len(cfg.prefix) + len(cfg.suffix)   # chars bound the tokens
    layers = handle.n_layers if (cfg.lam_max > 0 or cfg.caps) else target.max_layer + 1
    vocab = 10 * B * cfg.length * V * 4
    acts = B * T * layers * (12 * d + 4 * f + 2 * handle.n_heads * T) * 4
    swap = 64 * T * (layers * (6 * d + 2 * f) + V) * 4
    return int(vocab + acts + swap)


def _check_memory(handle, target, cfg: DreamConfig, B: int) -> None:
    need = search_memory(handle, target, cfg, B)
    have = cfg.memory_gb * 2 ** 30 if cfg.memory_gb else available_memory(handle.device)
    if have is not None and need > have:
        raise FeatvizError(
            f"dreaming needs about {need / 2 ** 30:.1f} GiB but {have / 2 ** 30:.1f} GiB is "
            f"available; lower --batch (now {B}) or --length (now {cfg.length})")


_ANNOUNCED: set = set()


def fast_bf16(device) -> bool:
    """Whether bfloat16 products are fast on ``device``: a CUDA GPU that supports them, or
    a CPU whose oneDNN has bfloat16 kernels (AVX512-BF16 / AMX).  Elsewhere torch emulates
    them: on a 2-core AVX2 CPU a 1024x1024 bf16 matmul took 3.2 s against 0.04 s in fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_precision(handle, choice: str) -> str:
    """"bf16" or "fp32" for the search on this handle's device ("auto": see fast_bf16)."""
    if choice != "auto":
        return choice
    return "bf16" if fast_bf16(handle.device) else "fp32"


def resolve_backend(handle, choice: str) -> str:
    """"torch" or "jax" for this model; "auto" picks JAX where supported and says so once."""
    from .jaxfwd import JAX_TYPES, supported, use_device
    if choice == "torch":
        return "torch"
    if choice == "jax" and not supported(handle):
        raise FeatvizError(f"the JAX backend does not run '{handle.model_type}' models; it runs "
                           f"{', '.join(JAX_TYPES)} (use --backend torch)")
    if choice == "jax":
        use_device(handle)
    if choice == "auto":
        pick = "jax" if supported(handle) else "torch"
        if pick == "jax":
            try:
                use_device(handle)
            except FeatvizError:
                pick = "torch"             # auto never fails for want of a JAX device
        if handle.name not in _ANNOUNCED:
            _ANNOUNCED.add(handle.name)
            import sys
            print(f"featviz: backend auto: using {pick} for {handle.model_type} models",
                  file=sys.stderr)
        return pick
    return "jax"


def _fit_budget(cfg: DreamConfig, B: int) -> DreamConfig:
    """Shrink the fixed-cost init stage (model samples, beam searches) for budgets under
    a minute, so a short run keeps to its budget; longer budgets use the config as is."""
    if cfg.budget_seconds is None or cfg.budget_seconds >= 60:
        return cfg
    f = cfg.budget_seconds / 60
    return replace(cfg, init_samples=max(B, round(cfg.init_samples * f)),
                   beam_width=max(2, round(cfg.beam_width * f)),
                   beam_expand=max(8, round(cfg.beam_expand * f)),
                   beam_lams=tuple(cfg.beam_lams)[: 1 if f < 0.25 else None])


def _init_ids(handle, cfg, tokens, mask, gen, batch):
    if cfg.init == "model":
        return sample_from_model(handle, batch, cfg.length, mask, gen, tokens.prefix)
    if cfg.init == "corpus":
        rows = torch.tensor([list(r)[: cfg.length] for r in cfg.corpus_init], dtype=torch.long)
        return rows[torch.arange(batch) % len(rows)].to(handle.device)
    allowed = mask.nonzero().flatten()
    return allowed[torch.randint(0, len(allowed), (batch, cfg.length), generator=gen,
                                 device=gen.device)]


def _scores_for_rows(act, xe, lam, cap):
    """(rows, pool) matrix: each row's score for every pool member."""
    return combine(act[None], xe[None], lam[:, None], cap[:, None])


def _population(archive: Archive, lam, cap, dev, distance: int = 0):
    """Per row, the archived candidate with the best score for that row's lambda or cap
    (rows kept ``distance`` tokens apart, see ``discretize.select_index``)."""
    keys = list(archive.entries)
    pool = torch.tensor(keys, device=dev)
    pa = torch.tensor([archive.entries[k][0] for k in keys], device=dev)
    px = torch.tensor([archive.entries[k][1] for k in keys], device=dev)
    return select(_scores_for_rows(torch.nan_to_num(pa, nan=-math.inf), px, lam, cap), pool,
                  distance)


def _verify_many(handle, target, tokens: Tokens, keys, n, batch: int = 64) -> dict:
    """Decode, re-encode, and run a fresh forward pass: the only numbers we report.
    Returns {key: Candidate, or None where the re-encoded text is not prefix + these
    tokens + suffix}.  Stable candidates are scored together (all have the same length)."""
    out, stable = {}, []
    for key in dict.fromkeys(keys):
        ids = handle.encode(tokens.text(key))
        body = ids[len(tokens.prefix): len(ids) - len(tokens.suffix)]
        if (len(body) != n or ids[:len(tokens.prefix)] != tokens.prefix
                or ids[len(ids) - len(tokens.suffix):] != tokens.suffix):
            out[key] = None
        else:
            stable.append((key, list(body)))
    for i in range(0, len(stable), batch):
        part = stable[i:i + batch]
        full = tokens.full(torch.tensor([b for _, b in part], device=handle.device))
        act, xe = exact_scores(handle, target, full, tokens.start, n)
        for j, (key, body) in enumerate(part):
            out[key] = Candidate(text=handle.decode(list(key)), token_ids=body,
                                 tokens=handle.token_strings(body),
                                 activation=float(act[j]), xe=float(xe[j]))
    return out


def _verify(handle, target, tokens: Tokens, key, n) -> Candidate | None:
    return _verify_many(handle, target, tokens, [key], n)[key]


class _Search:
    """One target's search: its archive, population, rotation queue and stats.  The
    relaxation may be shared with other targets (``dream_many``); everything else is
    per target."""

    def __init__(self, handle, target: Target, cfg: DreamConfig, tokens: Tokens, mask, tick,
                 backend: str = "torch"):
        self.h, self.target, self.cfg, self.tokens, self.mask, self.tick = (
            handle, target, cfg, tokens, mask, tick)
        self.scorer = None                # JAX: jitted swap scoring; torch: discretize's
        if backend == "jax":
            from .jaxscore import JaxScorer
            self.scorer = JaxScorer(handle, target, tokens, cfg.length,
                                    precision=cfg.precision)
        self.dev = handle.device
        self.gen = torch.Generator(device=self.dev).manual_seed(cfg.seed)   # draws on the model's device
        self.lam, self.cap = _row_params(cfg, self.dev)
        self.B, self.n = len(self.lam), cfg.length
        self.archive = Archive()
        self.stats = {"relax_steps": 0, "swap_iters": 0, "seconds": {}}
        self.soft_trace = []
        self.autocast = torch.autocast(self.dev.type, dtype=torch.bfloat16,
                                       enabled=cfg.precision == "bf16")
        self.pending_rot = []   # rotation candidates waiting for the next scoring round
        self.row_seconds = 0.0  # measured seconds per exactly scored row
        self.scored_seconds, self.scored_rows = 0.0, 0
        self.last_only = all(a.reduction == "last" for _, a in target.terms())
        self.rotating = self.last_only and cfg.rotate > 0      # rotate: 0 turns rotations off,
                                                               # not the last-position sweep

    # -- exact scores and one-hot gradients, on the search's backend --
    def evaluate(self, ids, with_xe: bool = True):
        if self.scorer is not None:
            return self.scorer.evaluate(ids, with_xe)
        with self.autocast:
            return evaluate(self.tokens, self.target, ids, with_xe=with_xe)

    def grads(self, pop):
        if self.scorer is not None:
            return self.scorer.onehot_grads(pop, self.lam, self.cap)
        with self.autocast:
            return onehot_grads(self.tokens, self.target, pop, self.lam, self.cap)

    # -- archive bookkeeping --
    def note_rotations(self, ids, per, floor):
        if self.rotating and len(ids):
            self.pending_rot.append(rotations(ids, per, floor, self.cfg.rotate))

    def take_rotations(self):
        if not self.pending_rot:
            return None
        out = torch.cat(self.pending_rot)
        self.pending_rot.clear()
        return out

    def score_into_archive(self, cands):
        cands = _stable_unique(self.tokens, cands, self.archive)
        if len(cands):
            t = time.perf_counter()
            a, x, per = self.evaluate(cands)
            # seconds per exactly scored row (activation + xe), over all rows scored so far
            # (small batches' fixed costs averaged in): what budgets are planned by
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
        want, done = max(self.B, cfg.init_samples), 0
        while done < want and (done == 0 or deadline is None
                               or time.perf_counter() < deadline):
            chunk = min(want - done, max(self.B, 16))
            self.score_into_archive(_init_ids(self.h, cfg, tokens, self.mask, self.gen, chunk))
            done += chunk
        self.stats["init_samples"] = done
        if cfg.init == "model" and not tokens.suffix:
            for j, bl in enumerate(cfg.beam_lams):
                if deadline is not None and time.perf_counter() > deadline:
                    self.stats["beams_skipped"] = len(cfg.beam_lams) - j
                    break
                with self.autocast:
                    bids, _, _ = beam_search(self.h, self.target, tokens, self.mask, self.n,
                                             beams=cfg.beam_width, expand=cfg.beam_expand,
                                             lam=float(bl), generator=self.gen,
                                             sample=(r + j) > 0, deadline=deadline)
                self.score_into_archive(bids)
                self.tick()
        rot = self.take_rotations()
        if rot is not None:
            self.score_into_archive(rot)
        if not self.archive.entries:
            return None
        return _population(self.archive, self.lam, self.cap, self.dev, self.cfg.distinct)

    # -- stage 3: discretize: argmax snapshots + hard samples from theta --
    def discretize(self, theta, snaps, trace):
        self.stats["relax_steps"] += trace.steps
        self.soft_trace.append({"soft_act": trace.soft_act, "soft_xe": trace.soft_xe})
        logits = theta + torch.where(self.mask, 0.0, -1e9)
        cands = [torch.nan_to_num(logits, nan=-1e9).argmax(-1)] + snaps
        rot = self.take_rotations()
        if rot is not None:
            cands.append(rot)
        p = torch.softmax(logits, -1).reshape(self.B * self.n, -1)
        if not torch.isfinite(p).all():           # the relaxation overflowed: keep argmaxes only
            self.stats["relax_nonfinite"] = True
        elif self.cfg.hard_samples:
            s = torch.multinomial(p, self.cfg.hard_samples, replacement=True, generator=self.gen)
            cands.append(s.reshape(self.B, self.n, -1).permute(0, 2, 1).reshape(-1, self.n))
        self.score_into_archive(torch.cat(cands))

    # -- stage 4: gradient- and LM-guided swaps, scored exactly --
    def refine(self, clock: "_Clock", reserve: float, budgeted: bool):
        cfg, tokens, target, archive = self.cfg, self.tokens, self.target, self.archive
        lam, cap, dev, B, mask, gen = self.lam, self.cap, self.dev, self.B, self.mask, self.gen
        autocast = self.autocast
        pop = _population(archive, lam, cap, dev, cfg.distinct)
        pop_a = torch.tensor([archive.entries[tuple(k)][0] for k in pop.tolist()], device=dev)
        pop_x = torch.tensor([archive.entries[tuple(k)][1] for k in pop.tolist()], device=dev)
        t_swap = time.perf_counter()
        depth = (target.max_layer + 1) / self.h.n_layers
        two_stage = cfg.xe_share < 1 and depth < 0.5
        sweep = cfg.sweep if cfg.sweep is not None else int(min(2048, max(192, 1500 / (B * depth))))
        sweep = min(sweep, int(mask.sum()))
        self.stats["sweep"] = sweep
        self.stats["two_stage"] = two_stage
        # rows that weigh fluency draw lm_share of their swaps from the model's own top
        # tokens; a pure-activation row (lambda 0, no cap) only gradient swaps, as GCG
        lm_rows = torch.where((lam == 0) & ~torch.isfinite(cap), 0.0, cfg.lm_share)
        # seconds a full iteration takes: before the first one, guessed from the scoring
        # rate measured at init (children, crossover and sweep rows scored, a gradient
        # pass, with headroom); then the longest one measured
        full_sweep = sweep
        longest = self.row_seconds * (B * (cfg.children + 4) + cfg.crossover
                                      + B * full_sweep * depth / 4) * 1.5
        it, measured = 0, False
        while it < (10 ** 9 if budgeted else cfg.swap_iters):
            # the next iteration must fit the budget: when less than a full one is left, a
            # smaller one runs (fewer children and sweep tokens, in proportion)
            left = clock.left() - reserve
            frac = 1.0 if not longest or left >= longest else left / longest
            if left <= 0 or frac < 0.05:
                break
            children = max(1, int(cfg.children * frac))
            sweep = max(1, int(full_sweep * frac)) if full_sweep else 0
            t_it = time.perf_counter()
            grad, lm = self.grads(pop)
            kids = propose(pop, grad.float(), lm.float(), mask, children, cfg.k_grad,
                           cfg.k_lm, lm_rows, gen)
            if sweep and self.last_only and not tokens.suffix:
                with autocast:
                    sk, sa, sdx = sweep_last(tokens, target, pop, grad, lm, mask, sweep)
                sa = torch.nan_to_num(sa.float(), nan=-math.inf)
                sx = pop_x.repeat_interleave(sweep) + sdx
                rows = _scores_for_rows(sa, sx, lam, cap)                    # (B, B*sweep)
                own = torch.arange(B, device=dev).repeat_interleave(sweep)
                rows = torch.where(own[None] == torch.arange(B, device=dev)[:, None], rows,
                                   -math.inf)
                pick = rows.topk(min(cfg.sweep_keep, sweep), dim=1).indices.flatten()
                pick = torch.unique(torch.cat([pick, sa.topk(min(cfg.sweep_keep,
                                                                 len(sa))).indices]))
                sk, sa, sx = sk[pick], sa[pick], sx[pick]
                ok = [i for i, row in enumerate(sk.tolist()) if tuple(row) not in archive
                      and tokens.stable(row)]
                if ok:
                    sk, sa, sx = sk[ok], sa[ok], sx[ok]
                    archive.add(sk, sa, sx)
                    pop_all = torch.cat([pop, sk])
                    pa_all, px_all = torch.cat([pop_a, sa]), torch.cat([pop_x, sx])
                    best = select_index(_scores_for_rows(pa_all, px_all, lam, cap), pop_all,
                                        cfg.distinct)
                    pop, pop_a, pop_x = pop_all[best], pa_all[best], px_all[best]
            rot = self.take_rotations()
            if rot is not None:
                kids = torch.cat([rot, kids])
            if cfg.crossover:
                kids = torch.cat([crossover(pop, pop_a, pop_x, max(1, int(cfg.crossover * frac)), 4, gen), kids])
            kids = _stable_unique(tokens, kids, archive)
            floor = float(pop_a.max())
            if len(kids) and two_stage:
                ka, _, per = self.evaluate(kids, with_xe=False)
                ka = ka.float()
                self.note_rotations(kids, per.float(), floor)
                m = max(1, math.ceil(cfg.xe_share * len(kids)))
                order = torch.argsort(torch.nan_to_num(ka, nan=-math.inf), descending=True)
                archive.add(kids[order[m:]], ka[order[m:]],
                            torch.full_like(ka[order[m:]], math.inf))
                kids = kids[order[:m]]
            if len(kids):
                ka, kx, per = self.evaluate(kids)
                ka, kx = ka.float(), kx.float()
                archive.add(kids, ka, kx)
                if not two_stage:
                    self.note_rotations(kids, per.float(), floor)
                pool_ids = torch.cat([pop, kids])
                pool_a = torch.nan_to_num(torch.cat([pop_a, ka]), nan=-math.inf)
                pool_x = torch.cat([pop_x, kx])
                best = select_index(_scores_for_rows(pool_a, pool_x, lam, cap), pool_ids,
                                    cfg.distinct)
                pop, pop_a, pop_x = pool_ids[best], pool_a[best], pool_x[best]
            it += 1
            dt = (time.perf_counter() - t_it) / frac          # what a full one would take
            longest = max(longest, dt) if measured else dt
            measured = True
            if frac < 1.0:
                self.stats["last_iter_fraction"] = round(frac, 3)
            self.tick()
        self.stats["swap_iters"] = it
        self.stats["seconds"]["swaps"] = time.perf_counter() - t_swap

    # -- stage 5: report only what a fresh pass computes on re-encoded text --
    def report(self, user_cfg: DreamConfig, backend: str, seconds: float) -> DreamResult:
        cfg, archive, target, handle = self.cfg, self.archive, self.target, self.h
        t_ver = time.perf_counter()
        slack = 0.0 if cfg.precision == "fp32" else 0.25   # bf16 xe may differ a little from fp32
        checked = {}

        def verify(key):
            if key not in checked:
                checked[key] = _verify(handle, target, self.tokens, key, self.n)
            return checked[key]

        def best_few(limit):
            return sorted(((a, k) for k, (a, x) in archive.entries.items()
                           if x <= limit + slack and a == a), reverse=True)[:8]

        limits = [float(c) for c in tuple(cfg.caps) + (cfg.xe_cap, math.inf)]
        checked.update(_verify_many(handle, target, self.tokens,          # one batched pass
                                    [k for k, _, _ in archive.frontier()] +
                                    [k for lim in limits for _, k in best_few(lim)], self.n))

        def best_under(limit):
            """Highest fp32-verified activation with fp32 xe <= limit, from the best few."""
            best = None
            for a, k in best_few(limit):
                c = verify(k)
                if c is not None and c.xe <= limit and (best is None
                                                        or c.activation > best.activation):
                    best = c
            return best

        verified = [c for c in (verify(k) for k, _, _ in archive.frontier()) if c is not None]
        extra = [best_under(lim) for lim in limits]
        frontier, top = [], -math.inf
        for c in sorted({tuple(c.token_ids): c for c in verified + [e for e in extra if e]}.values(),
                        key=lambda c: (c.xe, -c.activation)):
            if c.activation > top:
                frontier.append(c)
                top = c.activation

        def best_in_frontier(limit):
            ok = [c for c in frontier if c.xe <= limit]
            return max(ok, key=lambda c: c.activation) if ok else None

        stats = self.stats
        stats["seconds"]["verify"] = time.perf_counter() - t_ver
        stats["seconds"]["total"] = seconds + stats["seconds"]["verify"]
        stats["evaluated"] = archive.evaluated
        stats["soft_trace"] = self.soft_trace
        stats["backend"] = backend
        stats["precision"] = cfg.precision
        stats["diverged"] = not any(math.isfinite(a) for a, _ in archive.entries.values())
        stats["verified"] = len(checked)
        stats["shape"] = {"length": self.n, "prefix": len(self.tokens.prefix),
                          "suffix": len(self.tokens.suffix)}
        cfg_json = asdict(user_cfg)
        cfg_json.pop("corpus_init", None)
        return DreamResult(target=str(target), target_description=target.describe(handle),
                           model=handle.name, config=cfg_json, frontier=frontier,
                           best=best_in_frontier(math.inf),
                           best_fluent=best_in_frontier(cfg.xe_cap),
                           best_at={float(c): best_in_frontier(float(c)) for c in cfg.caps},
                           stats=stats)


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
    clock = _Clock(total)
    torch.manual_seed(cfg.seed)
    dev = handle.device
    mask = readable_mask(handle, cfg.vocab)
    prefix = handle.encode(cfg.prefix) if cfg.prefix else []
    suffix = handle.encode(cfg.suffix) if cfg.suffix else []
    tokens = Tokens(handle, prefix, suffix)
    for t in targets:         # a position or key the dream's sequences lack: say so now
        t.check_length(tokens.start + cfg.length + len(suffix),
                       (tokens.start, tokens.start + cfg.length))
    lam1, cap1 = _row_params(cfg, dev)
    B, n = len(lam1), cfg.length
    rows = PerRow(tuple(targets), tuple(i for i in range(K) for _ in range(B)))
    joint = targets[0] if K == 1 else rows
    _check_memory(handle, joint, cfg, K * B)
    backend = resolve_backend(handle, cfg.backend)
    user_cfg = cfg
    cfg = _fit_budget(replace(cfg, precision=resolve_precision(handle, cfg.precision)), B)
    bar = tqdm(total=total or (cfg.steps * cfg.restarts + cfg.swap_iters * K),
               desc=f"dreaming {targets[0]}" if K == 1 else f"dreaming {K} targets",
               disable=not progress, leave=False, unit="s" if total else "step")

    def tick(k=1):
        if total:
            bar.n = min(round(clock.elapsed(), 1), total)
            bar.refresh()
        else:
            bar.update(k)

    searches = [_Search(handle, t, cfg, tokens, mask, tick, backend) for t in targets]
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
            from .jaxrelax import relax_jax
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
        share = _Clock(None if total is None else (total - clock.elapsed()) / (K - i))
        # kept for verification: ~32 rows scored in float32 (with headroom), at the rate measured at init
        reserve = 0.0 if total is None else max(0.02 * cfg.budget_seconds, 48 * s.row_seconds)
        s.refine(share, reserve, budgeted=total is not None)
        results.append(s.report(user_cfg, backend,
                                joint_seconds / K + time.perf_counter() - t_own))
    bar.close()
    return results

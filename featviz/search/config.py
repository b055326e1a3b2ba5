"""DreamConfig: every knob of the search, in four groups, with its check.

The option names are flat and unique (``steps``, ``children``, ``beam_width`` ...): YAML
presets, command-line flags, ``DreamConfig(steps=20)`` and the JSON a result records all
use them.  Inside, each belongs to one group: ``rows`` (the population), ``start`` (the
init), ``relax`` (the relaxation) or ``swaps`` (the refinement); the search reads
``cfg.relax.steps``.  "No limit" is None.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from featviz.errors import FeatvizError


@dataclass
class RowsConfig:
    """The population: one row per lambda or xe cap."""

    batch: int = 8                  # population rows, one lambda or xe cap each
    lam_min: float = 0.05
    lam_max: float = 1.0            # 0: every lambda row 0 (with caps (): the raw mode,
                                    # activation alone, the forward stopping at the target)
    caps: tuple = (5.0, 6.0, 6.5)   # epsilon-constraint rows (best activation under xe cap)
    distinct: int = 0               # population rows differ in at least this many tokens
                                    # (0: each row takes its best, duplicates allowed)


@dataclass
class StartConfig:
    """Where the search starts (stage 1)."""

    init: str = "model"             # "model" | "random" | "corpus"
    init_samples: int = 64          # initial sequences scored before choosing each row's start
    init_fraction: float = 0.25     # the init (model samples, beams) ends by this share of
                                    # the budget: later beams are skipped, a late one completed
                                    # greedily
    beam_lams: tuple = (0.1, 0.3)   # LM-guided beam searches at init (one per lambda; () = none)
    beam_width: int = 8
    beam_expand: int = 48           # the model's top-k next tokens tried per beam and step
    corpus_init: list = field(default_factory=list)   # token id rows for init="corpus"


@dataclass
class RelaxConfig:
    """The continuous relaxation (stages 2-3)."""

    steps: int | None = 60          # relaxation steps (upper bound when a budget is set;
                                    # None: no limit, the budget bounds it)
    relax_fraction: float | None = None   # share of the budget the relaxation runs for
                                    # (after the init, which has its own share); None: 0.4
                                    # with a budget of a minute or more, 0 under it (at 20 s
                                    # its ~11 steps cost the swaps: benchmarks/README.md)
    restarts: int = 1               # independent relaxations (each with a fresh init)
    init_scale: float = 3.0         # theta = init_scale * one-hot(init) at start
    lr: float = 0.3
    tau0: float = 2.0
    tau1: float = 0.2
    straight_through: bool = True
    hard_samples: int = 16          # hard samples per row drawn from the final theta
    reset_patience: int = 10        # relaxation steps without a better hard sample before a
                                    # row restarts from its best (0: never)
    lm_topk: int = 0                # each step samples a position only among the model's top-k
                                    # next tokens there at the step before (COLD-Attack's top-k
                                    # mask; rows that weigh fluency; torch); 0: whole vocabulary
    sparse_k: int = 0               # ADC's dense-to-sparse support: each position sampled among
                                    # theta's top-S tokens, S from the whole vocabulary down to
                                    # sparse_k as the temperature anneals (torch); 0: off
    simplex: bool = False           # PGD's parameterization: Adam on per-position distributions,
                                    # projected onto the simplex after each step, hard rows
                                    # drawn from them (lr in probability units)


@dataclass
class SwapConfig:
    """The refinement: single-token swaps scored exactly (stage 4)."""

    swap_iters: int | None = 40     # swap iterations (None: no limit, the budget bounds it)
    children: int = 24              # swap children per parent and iteration
    redraw: int = 1                 # swap draws per child: each parent draws children x
                                    # redraw swaps and keeps the first `children` never
                                    # scored before (1: every draw, repeats skipped)
    k_grad: int = 64
    k_lm: int = 48
    lm_share: float = 0.5           # share of swaps drawn from the model's own top tokens
    sweep: int | None = None        # tokens tried at the last position per row and iteration
                                    # (None: as many as ~1500 token-layers of compute allow)
    sweep_keep: int = 8             # of those, kept per row (best by the row's score)
    crossover: int = 16             # head-of-fluent + tail-of-strong children per iteration
    rotate: int = 8                 # rotation moves per iteration (last-position targets)
    xe_share: float = 0.35          # two-stage scoring: fluency only for the best children by
                                    # activation (used when the target sits in the lower layers)
    relax_share: float = 0.0        # share of swaps drawn from the relaxation's top tokens at
                                    # the position (its final logits; 0 or no relaxation: none;
                                    # 0.25 measured worse, benchmarks/README.md)
    k_relax: int = 16               # those top tokens per position
    focus: tuple = ()               # successive halving: at each of these shares of the swap
                                    # stage, the rows focus_by names halve; only the
                                    # strongest of them propose children (as many in all)
                                    # and sweep, the others are kept as they are
    focus_by: str = "activation"    # which rows halve: "activation" (those that weigh
                                    # activation alone, by activation; the others kept) or
                                    # "fluent" (every row, by its member's activation at
                                    # xe <= xe_cap; a member two rows share counted once)


GROUPS = {"rows": RowsConfig, "start": StartConfig, "relax": RelaxConfig, "swaps": SwapConfig}
GROUP_OF = {f.name: g for g, cls in GROUPS.items() for f in fields(cls)}
# every option, in the order results have always recorded them
OPTIONS = ("length", "batch", "seed", "budget_seconds", "steps", "swap_iters", "relax_fraction",
           "init_fraction", "restarts", "init", "init_samples", "beam_lams", "beam_width",
           "beam_expand", "precision", "init_scale", "lr", "tau0", "tau1", "straight_through",
           "hard_samples", "lam_min", "lam_max", "caps", "xe_cap", "children", "k_grad", "k_lm",
           "lm_share", "sweep", "sweep_keep", "distinct", "crossover", "rotate", "xe_share",
           "vocab", "prefix", "suffix", "corpus_init", "memory_gb", "backend", "reset_patience",
           "relax_share", "k_relax", "lm_topk", "sparse_k",
           "simplex", "focus", "focus_by", "redraw")


@dataclass(init=False)
class DreamConfig:
    length: int = 12                # optimised tokens after BOS (+ prefix)
    seed: int = 0
    budget_seconds: float | None = None   # wall clock for everything; None: use step counts
    xe_cap: float = 6.5             # what "fluent" means in the report
    precision: str = "auto"         # search arithmetic: "bf16" (autocast), "fp32", or "auto":
                                    # bf16 where the device has fast bfloat16 (see
                                    # fast_bf16), else fp32; reports are always fp32
    vocab: str = "ascii"            # "ascii" | "all"
    prefix: str = ""
    suffix: str = ""
    memory_gb: float | None = None  # memory the search may use (None: what the OS says is free)
    backend: str = "torch"          # "torch" | "jax" | "auto" (JAX where the architecture is
                                    # supported): the relaxation and the swap scoring run on it;
                                    # the last-position sweep and the reports run in torch
    rows: RowsConfig = field(default_factory=RowsConfig)
    start: StartConfig = field(default_factory=StartConfig)
    relax: RelaxConfig = field(default_factory=RelaxConfig)
    swaps: SwapConfig = field(default_factory=SwapConfig)

    def __init__(self, **options):
        """``DreamConfig(steps=20, children=8)``: any option by its flat name (or a whole
        group, ``relax=RelaxConfig(...)``)."""
        for f in fields(self):
            if f.name in GROUPS:
                given = options.pop(f.name, None)
                setattr(self, f.name, GROUPS[f.name](**vars(given)) if given is not None
                        else GROUPS[f.name]())
            else:
                setattr(self, f.name, options.pop(f.name, f.default))
        for name, value in options.items():
            if name not in GROUP_OF:
                raise TypeError(f"DreamConfig got an unknown option '{name}'")
            setattr(getattr(self, GROUP_OF[name]), name, value)

    def get(self, name: str):
        """An option's value by its flat name."""
        return getattr(getattr(self, GROUP_OF[name]), name) if name in GROUP_OF \
            else getattr(self, name)

    def flat(self) -> dict:
        """Every option by its flat name, in the order results record them."""
        return {name: self.get(name) for name in OPTIONS}

    def replace(self, **options) -> "DreamConfig":
        """A copy with some options changed (flat names)."""
        return DreamConfig(**{**self.flat(), **options})

    def check(self) -> "DreamConfig":
        def bad(msg):
            raise FeatvizError(msg)
        if not isinstance(self.length, int) or self.length < 1:
            bad(f"--length must be at least 1, got {self.length}")
        if self.rows.batch < 1:
            bad(f"--batch must be at least 1, got {self.rows.batch}")
        if any(v is not None and v < 0 for v in (self.relax.steps, self.swaps.swap_iters)):
            bad("--steps and --swap-iters must not be negative")
        if self.budget_seconds is None and (self.relax.steps is None or self.swaps.swap_iters is None):
            bad("steps or swap_iters without a limit need --budget-seconds")
        if self.budget_seconds is not None and not self.budget_seconds > 0:
            bad(f"--budget-seconds must be positive, got {self.budget_seconds}")
        if self.start.init not in ("model", "random", "corpus"):
            bad(f"--init must be model, random or corpus, got '{self.start.init}'")
        if self.start.init == "corpus" and not self.start.corpus_init:
            bad("--init corpus needs corpus windows to start from")
        if self.start.init == "corpus" and any(len(r) < self.length for r in self.start.corpus_init):
            bad(f"every corpus_init row needs at least --length {self.length} tokens; the "
                f"shortest has {min(len(r) for r in self.start.corpus_init)}")
        if self.relax.relax_fraction is not None and not 0 <= self.relax.relax_fraction <= 1:
            bad("relax_fraction must lie in [0, 1]")
        if not isinstance(self.relax.reset_patience, int) or self.relax.reset_patience < 0:
            bad(f"reset_patience must be a non-negative integer, got {self.relax.reset_patience!r}")
        if not isinstance(self.relax.lm_topk, int) or self.relax.lm_topk < 0:
            bad(f"lm_topk must be a non-negative integer, got {self.relax.lm_topk!r}")
        if self.relax.lm_topk and self.backend == "jax":
            bad("lm_topk runs on the torch backend only; use --backend torch or lm_topk 0")
        if not isinstance(self.relax.sparse_k, int) or self.relax.sparse_k < 0:
            bad(f"sparse_k must be a non-negative integer, got {self.relax.sparse_k!r}")
        if self.relax.sparse_k and self.backend == "jax":
            bad("sparse_k runs on the torch backend only; use --backend torch or sparse_k 0")
        if not isinstance(self.relax.simplex, bool):
            bad(f"simplex must be true or false, got {self.relax.simplex!r}")
        if self.relax.simplex and (self.relax.lm_topk or self.relax.sparse_k):
            bad("simplex samples from its own distributions; set lm_topk 0 and sparse_k 0 "
                "with it")
        lo, hi = self.rows.lam_min, self.rows.lam_max
        if not (hi == 0 or 0 < lo <= hi):
            bad(f"lam_min and lam_max must satisfy 0 < lam_min <= lam_max (or lam_max 0: "
                f"every row weighs activation alone), got {lo} and {hi}")
        if not 0 < self.start.init_fraction <= 1:
            bad("init_fraction must lie in (0, 1]")
        if self.relax.tau0 <= 0 or self.relax.tau1 <= 0:
            bad("temperatures must be positive")
        if self.precision not in ("auto", "bf16", "fp32"):
            bad(f"precision must be auto, bf16 or fp32, got '{self.precision}'")
        if any(not isinstance(x, (int, float)) or x < 0 for x in self.start.beam_lams):
            bad("beam_lams must be non-negative numbers")
        if self.start.init_samples < 1:
            bad("init_samples must be at least 1")
        if self.vocab not in ("ascii", "all"):
            bad(f"vocab must be ascii or all, got '{self.vocab}'")
        if self.swaps.sweep is not None and self.swaps.sweep < 0:
            bad("sweep must not be negative")
        if not isinstance(self.rows.distinct, int) or not 0 <= self.rows.distinct <= self.length:
            bad(f"distinct (rows kept that many tokens apart) must be an integer in [0, "
                f"{self.length}] (the length), got {self.rows.distinct}: lower distinct in "
                f"the --config preset or raise --length")
        if min(self.swaps.children, self.swaps.k_grad, self.swaps.k_lm, self.swaps.k_relax) < 1:
            bad("children, k_grad, k_lm and k_relax must be at least 1")
        if (isinstance(self.swaps.redraw, bool) or not isinstance(self.swaps.redraw, int)
                or self.swaps.redraw < 1):
            bad(f"redraw must be an integer of at least 1, got {self.swaps.redraw!r}")
        f = self.swaps.focus
        if (not isinstance(f, (tuple, list))
                or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in f)
                or any(not 0 < x < 1 for x in f) or list(f) != sorted(set(f))):
            bad(f"focus must be increasing shares of the swap stage in (0, 1), e.g. "
                f"[0.25, 0.5, 0.75], got {f!r}")
        if self.swaps.focus_by not in ("activation", "fluent"):
            bad(f"focus_by must be activation or fluent, got {self.swaps.focus_by!r}")
        if not 0 <= self.swaps.relax_share <= 1:
            bad(f"relax_share must lie in [0, 1], got {self.swaps.relax_share}")
        if self.backend not in ("torch", "jax", "auto"):
            bad(f"--backend must be auto, jax or torch, got '{self.backend}'")
        if self.memory_gb is not None and not self.memory_gb > 0:
            bad(f"memory_gb must be positive, got {self.memory_gb}")
        return self

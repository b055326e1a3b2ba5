"""DreamConfig: every knob of the search, with its check."""
from __future__ import annotations

from dataclasses import dataclass, field

from featviz.errors import FeatvizError


@dataclass
class DreamConfig:
    length: int = 12                # optimised tokens after BOS (+ prefix)
    batch: int = 8                  # population rows, one lambda or xe cap each
    seed: int = 0
    budget_seconds: float | None = None   # wall clock for everything; None: use step counts
    steps: int | None = 60          # relaxation steps (upper bound when a budget is set;
                                    # None: no limit, the budget bounds it)
    swap_iters: int | None = 40     # swap iterations (None: no limit, the budget bounds it)
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
        if any(v is not None and v < 0 for v in (self.steps, self.swap_iters)):
            bad("--steps and --swap-iters must not be negative")
        if self.budget_seconds is None and (self.steps is None or self.swap_iters is None):
            bad("steps or swap_iters without a limit need --budget-seconds")
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

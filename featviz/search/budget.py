"""The clock and the memory plan: keeping a dream inside its time budget and its memory."""
from __future__ import annotations

import math
import time

import torch

from featviz.errors import FeatvizError
from featviz.model.precision import copy_bytes
from featviz.search.config import DreamConfig
from featviz.targets.core import Target


class Clock:
    def __init__(self, budget):
        self.t0 = time.perf_counter()
        self.budget = budget

    def elapsed(self):
        return time.perf_counter() - self.t0

    def left(self):
        return math.inf if self.budget is None else self.budget - self.elapsed()


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


def pass_rows(device) -> tuple[int, int, int]:
    """Rows of one exact-scoring pass, one gradient pass and one last-position sweep pass
    (single tokens after a KV cache) when a group's searches share them: small on a CPU,
    where a bigger pass gains nothing; on a GPU big enough to fill it."""
    if torch.device(device).type == "cuda":
        return 1024, 256, 16384
    return 64, 64, 16384


def search_memory(handle, target: Target, cfg: DreamConfig, B: int) -> int:
    """Peak bytes the search needs, roughly: the relaxation's logits over the vocabulary
    (theta, its gradient, Adam's two moments, the Gumbel samples and the soft-xe logits)
    plus the activations kept for the backward pass, and the swap stage's largest pass
    (``pass_rows``)."""
    V, d, f = handle.vocab_size, handle.d_model, handle.d_mlp
    T = cfg.length + 1 + len(cfg.prefix) + len(cfg.suffix)   # chars bound the tokens
    layers = handle.n_layers if (cfg.rows.lam_max > 0 or cfg.rows.caps) else target.depth(handle) + 1
    vocab = 10 * B * cfg.length * V * 4
    acts = B * T * layers * (12 * d + 4 * f + 2 * handle.n_heads * T) * 4
    rows, grad_rows, _ = pass_rows(handle.device)
    swap = max(rows * T * (layers * (6 * d + 2 * f) + V), grad_rows * 4 * T * V) * 4
    return int(vocab + acts + swap)


def weight_copies_fit(handle, cfg: DreamConfig) -> bool:
    """Whether the search keeps bfloat16 copies of the weight matrices
    (``model.precision``): with bf16 arithmetic, when they take under a quarter of the
    memory the search may use beside the model."""
    if cfg.precision != "bf16":
        return False
    have = cfg.memory_gb * 2 ** 30 if cfg.memory_gb else available_memory(handle.device)
    return have is None or copy_bytes(handle) <= 0.25 * have


def check_memory(handle, target, cfg: DreamConfig, B: int) -> None:
    need = search_memory(handle, target, cfg, B)
    have = cfg.memory_gb * 2 ** 30 if cfg.memory_gb else available_memory(handle.device)
    if have is not None and need > have:
        raise FeatvizError(
            f"dreaming needs about {need / 2 ** 30:.1f} GiB but {have / 2 ** 30:.1f} GiB is "
            f"available; lower --batch (now {B}) or --length (now {cfg.length})")


RELAX_FRACTION = 0.4     # the relaxation's share of a budget of a minute or more
SHORT_BUDGET = 60.0      # seconds: under this a budget is short


def fit_budget(cfg: DreamConfig, B: int) -> DreamConfig:
    """Fit the stages to the budget.  A relaxation share left open (``relax_fraction``
    None) is ``RELAX_FRACTION``, or 0 for budgets under a minute: there it gets a dozen
    steps on a CPU, and their time bought a swap stage 2.4 times better (fluent ratio
    0.68 against 0.28 at 20 s, 3 seeds, lower on 8 of 8 dev neurons).  Budgets under a
    minute also shrink the fixed-cost init stage (model samples, beam searches), so a
    short run keeps to its budget; longer budgets use the config as is."""
    short = cfg.budget_seconds is not None and cfg.budget_seconds < SHORT_BUDGET
    if cfg.relax.relax_fraction is None:
        cfg = cfg.replace(relax_fraction=0.0 if short else RELAX_FRACTION)
    if not short:
        return cfg
    f = cfg.budget_seconds / SHORT_BUDGET
    return cfg.replace(init_samples=max(B, round(cfg.start.init_samples * f)),
                   beam_width=max(2, round(cfg.start.beam_width * f)),
                   beam_expand=max(8, round(cfg.start.beam_expand * f)),
                   beam_lams=tuple(cfg.start.beam_lams)[: 1 if f < 0.25 else None])


def fit_group(handle, target: Target, cfg: DreamConfig, targets: int, limit: int = 256) -> int:
    """How many targets to dream in one batch (``dream_many``) on this handle's device: 1 on
    a CPU, where a pass over more rows costs as much as separate passes; on a GPU the
    largest power of two up to ``limit`` (and no more than there are targets) whose
    relaxation and scoring passes (``search_memory``) fit in 70 % of the free memory."""
    if handle.device.type != "cuda":
        return 1
    have = cfg.memory_gb * 2 ** 30 if cfg.memory_gb else available_memory(handle.device)
    k, B = 1, cfg.rows.batch
    while (k * 2 <= min(limit, max(1, targets))
           and (have is None or search_memory(handle, target, cfg, k * 2 * B) <= 0.7 * have)):
        k *= 2
    return k

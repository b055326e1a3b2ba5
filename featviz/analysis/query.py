"""A single-target query: synthetic maximizers beside the top corpus exemplars.

    q = featviz.query(handle, "mlp:12:345", QueryConfig(dream=DreamConfig(budget_seconds=60)))
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from featviz.errors import FeatvizError
from featviz.mining.miner import scan
from featviz.mining.records import TargetExemplars
from featviz.mining.reference import CorpusReference, corpus_reference
from featviz.model.loading import load_model
from featviz.search.api import dream
from featviz.search.config import DreamConfig
from featviz.search.result import DreamResult
from featviz.targets.spec import as_target


@dataclass
class QueryConfig:
    dream: DreamConfig = field(default_factory=DreamConfig)
    corpus: str | None = None        # None: the embedded Wikipedia summaries
    corpus_tokens: int = 20_000      # tokens of corpus to scan for exemplars (0: skip)
    window: int = 63
    top_k: int = 5

    def check(self) -> "QueryConfig":
        if self.dream.start.init == "corpus" and not self.dream.start.corpus_init:
            # the windows come from this query's own scan of the corpus
            if not self.corpus_tokens:
                raise FeatvizError("--init corpus starts from the top corpus exemplars; give "
                                   "--corpus-tokens > 0")
            self.dream.replace(init="model").check()
        else:
            self.dream.check()
        if self.corpus_tokens < 0:
            raise FeatvizError(f"--corpus-tokens must not be negative, got {self.corpus_tokens}")
        if self.corpus_tokens and self.corpus_tokens < self.window:
            raise FeatvizError(f"--corpus-tokens {self.corpus_tokens} is less than one window "
                               f"of {self.window} tokens")
        if self.top_k < 1:
            raise FeatvizError("--top-k must be at least 1")
        return self


@dataclass
class QueryResult:
    dream: DreamResult
    exemplars: TargetExemplars | None
    corpus_max: float | None       # max over corpus tokens (the exemplars' own figure)
    ratio_fluent: float | None     # best fluent synthetic activation / corpus reference
    ratio_best: float | None       # best synthetic activation at any fluency / corpus reference
    model: dict
    reference: CorpusReference | None = None   # what the ratios divide by, or why not

    def to_json(self, handle=None) -> dict:
        ex = None
        if self.exemplars is not None:
            ex = {"n_windows": self.exemplars.n_windows, "n_tokens": self.exemplars.n_tokens,
                  "max": self.exemplars.max,
                  "top": [e.to_json(handle) for e in self.exemplars.top]}
        return {"version": 1, "model": self.model, "dream": self.dream.to_json(),
                "exemplars": ex, "corpus_max": self.corpus_max,
                "corpus_reference": self.reference.to_json() if self.reference else None,
                "ratio_fluent": self.ratio_fluent, "ratio_best": self.ratio_best}


def query(handle, target, config: QueryConfig | None = None, *, progress: bool = True
          ) -> QueryResult:
    """Dream for ``target`` and scan the corpus for its top exemplars.  ``handle``: a loaded
    model, or a model spec (None: the embedded default) to load."""
    cfg = (config or QueryConfig()).check()
    if handle is None or isinstance(handle, str):
        handle = load_model(handle)
    t = as_target(target, handle)
    ex = None
    if cfg.corpus_tokens:
        ex = scan(handle, [t], cfg.corpus, window=cfg.window, max_tokens=cfg.corpus_tokens,
                  k=cfg.top_k, progress=progress)[0]
    dcfg = cfg.dream
    if dcfg.start.init == "corpus" and not dcfg.start.corpus_init:
        starts = corpus_starts(ex.top if ex is not None else [], dcfg.length)
        if not starts:
            raise FeatvizError("--init corpus found no exemplar to start from in the scanned "
                               "corpus; scan more (--corpus-tokens) or use --init model")
        dcfg = dcfg.replace(corpus_init=starts)
    res = dream(handle, t, dcfg, progress=progress)
    ref = corpus_reference(ex, t, **res.shape) if ex is not None else None
    act = lambda c: c.activation if c is not None else None  # noqa: E731
    return QueryResult(dream=res, exemplars=ex,
                       corpus_max=ex.max if ex is not None and math.isfinite(ex.max) else None,
                       ratio_fluent=ref.ratio(act(res.best_fluent)) if ref else None,
                       ratio_best=ref.ratio(act(res.best)) if ref else None,
                       model=handle.describe(), reference=ref)


def corpus_starts(exemplars, length: int) -> list[list[int]]:
    """Warm starts for ``--init corpus``: from each exemplar, the ``length`` tokens that end
    at its peak (the window's first ``length`` after BOS when the peak comes earlier), so
    a last-position target starts on the real text that fired it most.  Windows with fewer
    than ``length`` tokens after BOS are skipped."""
    out = []
    for e in exemplars:
        body = list(e.token_ids)[1:]                  # BOS dropped
        if len(body) < length:
            continue
        end = max(length, min(int(e.peak), len(body)))
        out.append(body[end - length:end])
    return out

"""A single-target query: synthetic maximizers beside the top corpus exemplars.

    q = featviz.query("mlp:12:345", QueryConfig(dream=DreamConfig(budget_seconds=60)))
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields, replace

from .dream import DreamConfig, DreamResult, dream
from .errors import FeatvizError
from .exemplars import CorpusReference, TargetExemplars, corpus_reference, scan
from .models import load_model
from .targets import as_target


@dataclass
class QueryConfig:
    dream: DreamConfig = field(default_factory=DreamConfig)
    corpus: str | None = None        # None: the embedded Wikipedia summaries
    corpus_tokens: int = 20_000      # tokens of corpus to scan for exemplars (0: skip)
    window: int = 63
    top_k: int = 5

    def check(self) -> "QueryConfig":
        if self.dream.init == "corpus" and not self.dream.corpus_init:
            # the windows come from this query's own scan of the corpus
            if not self.corpus_tokens:
                raise FeatvizError("--init corpus starts from the top corpus exemplars; give "
                                   "--corpus-tokens > 0")
            replace(self.dream, init="model").check()
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


def query(target, config: QueryConfig | None = None, *, model=None, progress: bool = True
          ) -> QueryResult:
    """Dream for ``target`` and scan the corpus for its top exemplars."""
    cfg = (config or QueryConfig()).check()
    handle = model if model is not None and not isinstance(model, str) else load_model(model)
    t = as_target(target, handle)
    ex = None
    if cfg.corpus_tokens:
        ex = scan(handle, [t], cfg.corpus, window=cfg.window, max_tokens=cfg.corpus_tokens,
                  k=cfg.top_k, progress=progress)[0]
    dcfg = cfg.dream
    if dcfg.init == "corpus" and not dcfg.corpus_init:
        starts = corpus_starts(ex.top if ex is not None else [], dcfg.length)
        if not starts:
            raise FeatvizError("--init corpus found no exemplar to start from in the scanned "
                               "corpus; scan more (--corpus-tokens) or use --init model")
        dcfg = replace(dcfg, corpus_init=starts)
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


# ---- configs (YAML presets) ----
_OPTIONAL_NUMBERS = {"budget_seconds", "sweep", "memory_gb"}


def _typed(name: str, v, default):
    """A config value checked against the type of its default (one-line error if not)."""
    def bad(kind):
        raise FeatvizError(f"config option {name} must be {kind}, got {v!r}")
    number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)  # noqa: E731
    if v is None:
        if name in _OPTIONAL_NUMBERS:
            return None
        bad("set (it has no 'none' value)")
    if name in _OPTIONAL_NUMBERS or (number(default)):
        if not number(v) or (isinstance(v, float) and not math.isfinite(v)):
            bad("a finite number")
        if isinstance(default, int) and not isinstance(default, bool) and not isinstance(v, int):
            bad("an integer")
        return v
    if isinstance(default, bool):
        if not isinstance(v, bool):
            bad("true or false")
        return v
    if isinstance(default, str):
        if not isinstance(v, str):
            bad("a string")
        return v
    if isinstance(default, (tuple, list)):
        if not isinstance(v, (list, tuple)) or not all(number(x) and math.isfinite(x) for x in v):
            bad("a list of numbers")
        return tuple(v)
    return v


def load_config(path: str | None, overrides: dict) -> QueryConfig:
    """A QueryConfig from a YAML preset (optional) with command-line overrides on top."""
    data: dict = {}
    if path:
        import yaml
        if not os.path.isfile(path):
            raise FeatvizError(f"config file '{path}' does not exist; see configs/ for presets")
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise FeatvizError(f"config file '{path}' is not valid YAML: "
                               f"{str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise FeatvizError(f"config file '{path}' must be a mapping of option: value")
    data.update({k: v for k, v in overrides.items() if v is not None})
    dream_keys = {f.name for f in fields(DreamConfig)}
    query_keys = {f.name for f in fields(QueryConfig)} - {"dream"}
    extra = {"target", "model", "targets"}
    unknown = set(data) - dream_keys - query_keys - extra
    if unknown:
        raise FeatvizError(f"unknown config option(s) {', '.join(sorted(unknown))}; valid: "
                           f"{', '.join(sorted(dream_keys | query_keys | extra))}")
    defaults = DreamConfig()
    dkw = {}
    for k, v in data.items():
        if k in dream_keys:
            dkw[k] = _typed(k, v, getattr(defaults, k))
    for name in ("corpus_tokens", "window", "top_k"):
        v = data.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise FeatvizError(f"config option {name} must be an integer, got {v!r}")
    for name in ("corpus", "target", "model"):
        v = data.get(name)
        if v is not None and not isinstance(v, str):
            raise FeatvizError(f"config option {name} must be a string, got {v!r}")
    try:
        dc = DreamConfig(**dkw)
        qc = QueryConfig(dream=dc, **{k: v for k, v in data.items() if k in query_keys})
    except TypeError as e:
        raise FeatvizError(f"bad config: {e}") from None
    return qc.check()


def config_as_dict(cfg: QueryConfig) -> dict:
    d = asdict(cfg)
    d["dream"].pop("corpus_init", None)
    return d

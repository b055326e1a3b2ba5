"""YAML presets -> configs: the one loader behind every command's ``--config``.

It sits above the run functions (it builds a QueryConfig, which holds a DreamConfig);
only the CLI imports it."""
from __future__ import annotations

import math
import os
from dataclasses import fields

from featviz.analysis.query import QueryConfig
from featviz.errors import FeatvizError
from featviz.search.config import OPTIONS, DreamConfig


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
    dream_keys = set(OPTIONS)
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
            dkw[k] = typed_value(k, v, defaults.get(k))
    for name in ("corpus_tokens", "window", "top_k"):
        v = data.get(name)
        if name in data and (isinstance(v, bool) or not isinstance(v, int)):
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


_OPTIONAL_NUMBERS = {"budget_seconds", "sweep", "memory_gb", "steps", "swap_iters"}


def typed_value(name: str, v, default):
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

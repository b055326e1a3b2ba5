"""featviz: what makes a neuron, attention head or residual direction of a language model fire.

The public API, imported lazily (``import featviz`` loads neither torch nor JAX)::

    import featviz
    m = featviz.load_model()                          # embedded SmolLM2-135M
    t = featviz.parse_target("mlp:12:345", m)
    featviz.read_text(m, [t], "The cat sat on the mat")
    r = featviz.dream(m, t, featviz.DreamConfig(budget_seconds=60))

Every run function takes ``(handle, target_or_targets, config=None, *, progress=True)``.
The layout and the layering rule are in docs/design.md.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {
    "FeatvizError": "featviz.errors",
    "DEFAULT_MODEL": "featviz.model.loading", "ModelHandle": "featviz.model.loading",
    "load_model": "featviz.model.loading", "wrap_model": "featviz.model.loading",
    "Target": "featviz.targets.core", "Atom": "featviz.targets.core",
    "Sum": "featviz.targets.core", "PerRow": "featviz.targets.core",
    "parse_target": "featviz.targets.spec", "parse_targets": "featviz.targets.spec",
    "as_target": "featviz.targets.spec",
    "Reading": "featviz.targets.read", "read_text": "featviz.targets.read",
    "read_ids": "featviz.targets.read", "evaluate_ids": "featviz.targets.read",
    "DreamConfig": "featviz.search.config", "Candidate": "featviz.search.result",
    "DreamResult": "featviz.search.result",
    "dream": "featviz.search.api", "dream_many": "featviz.search.api",
    "MineConfig": "featviz.mining.miner", "TargetExemplars": "featviz.mining.miner",
    "mine": "featviz.mining.miner",
    "QueryConfig": "featviz.analysis.query", "QueryResult": "featviz.analysis.query",
    "query": "featviz.analysis.query",
    "AuditConfig": "featviz.analysis.audit", "AuditReport": "featviz.analysis.audit",
    "audit": "featviz.analysis.audit",
    "GalleryConfig": "featviz.site.gallery", "GalleryResult": "featviz.site.gallery",
    "build_gallery": "featviz.site.gallery",
    "CompareConfig": "featviz.analysis.compare", "CompareResult": "featviz.analysis.compare",
    "compare": "featviz.analysis.compare",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'featviz' has no attribute {name!r}")


def __dir__():
    return __all__

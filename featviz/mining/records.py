"""What mining returns: exemplar windows, interval bands and each target's record."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(eq=False)
class Exemplar:
    value: float            # max over the window (BOS excluded unless include_bos)
    peak: int               # position of the max in the window (BOS = 0)
    window: int             # window index in the corpus stream
    ids: list               # token ids, BOS included: a list, or an int32 numpy row straight
                            # from the miner (``token_ids`` gives a list either way)
    activations: list       # per position, BOS included (a list, or a float32 numpy row
                            # straight from the miner; to_json gives a list either way)

    @property
    def token_ids(self) -> list:
        """Token ids as a Python list (converted from the miner's row on first use: a
        gallery of thousands of targets pays for the lists it writes, not the miner)."""
        if isinstance(self.ids, np.ndarray):
            self.ids = self.ids.tolist()
        return self.ids

    def to_json(self, handle=None) -> dict:
        acts = self.activations
        d = {"value": self.value, "peak": self.peak, "window": self.window,
             "token_ids": self.token_ids,
             "activations": acts.tolist() if isinstance(acts, np.ndarray) else acts}
        if handle is not None:
            d["tokens"] = handle.token_strings(self.token_ids)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Exemplar":
        return cls(d["value"], d["peak"], d["window"], d["token_ids"], d["activations"])


@dataclass
class Band:
    lo: float               # fraction of the corpus max (exclusive)
    hi: float               # fraction of the corpus max (inclusive)
    count: int              # windows whose max lies in the band (top-k included)
    samples: list           # Exemplar

    def to_json(self, handle=None) -> dict:
        return {"lo": self.lo, "hi": self.hi, "count": self.count,
                "samples": [e.to_json(handle) for e in self.samples]}


@dataclass
class TargetExemplars:
    target: str
    top: list = field(default_factory=list)       # Exemplar, best first
    # the k windows with the most negative minimum, most negative first (value: the window's
    # min, peak: where it is); only windows whose min is below 0
    bottom: list = field(default_factory=list)
    max: float = float("-inf")
    min: float = float("inf")
    mean: float = float("nan")
    std: float = float("nan")
    n_windows: int = 0
    n_tokens: int = 0                             # token positions read (BOS excluded)
    density: float = float("nan")                 # fraction of tokens above the threshold
    density_threshold: float = 0.0
    hist_edges: list = field(default_factory=list)
    hist_counts: list = field(default_factory=list)
    bands: list = field(default_factory=list)     # Band, lowest first
    controls: list = field(default_factory=list)  # Exemplar (random windows)
    nonfinite: int = 0                            # tokens where the value was NaN or Inf
    # like-for-like corpus figures for fixed-position and mean targets (see corpus_reference):
    # position_max[p] is the max over windows of the value at position p (BOS = 0);
    # prefix_mean_max[m] the max over windows of the mean over positions 1..m (entry 0 unused)
    position_max: list = field(default_factory=list)
    prefix_mean_max: list = field(default_factory=list)

    def quantile(self, q: float) -> float:
        """Approximate quantile from the histogram (exact to one bin width)."""
        c = np.asarray(self.hist_counts, dtype=np.float64)
        if not c.sum():
            return float("nan")
        cum = np.cumsum(c) / c.sum()
        i = int(np.searchsorted(cum, q))
        i = min(i, len(c) - 1)
        lo, hi = self.hist_edges[i], self.hist_edges[i + 1]
        prev = cum[i - 1] if i else 0.0
        frac = (q - prev) / max(cum[i] - prev, 1e-12)
        return float(lo + (hi - lo) * min(max(frac, 0.0), 1.0))

    def to_json(self, handle=None) -> dict:
        return {"target": self.target, "max": self.max, "min": self.min, "mean": self.mean,
                "std": self.std,
                "n_windows": self.n_windows, "n_tokens": self.n_tokens,
                "density": self.density, "density_threshold": self.density_threshold,
                "nonfinite": self.nonfinite,
                "quantiles": {str(q): self.quantile(q) for q in (0.5, 0.9, 0.99, 0.999)},
                "histogram": {"edges": self.hist_edges, "counts": self.hist_counts},
                "top": [e.to_json(handle) for e in self.top],
                "bottom": [e.to_json(handle) for e in self.bottom],
                "bands": [b.to_json(handle) for b in self.bands],
                "controls": [e.to_json(handle) for e in self.controls],
                "position_max": _json_floats(self.position_max),
                "prefix_mean_max": _json_floats(self.prefix_mean_max)}

    @classmethod
    def from_json(cls, d: dict) -> "TargetExemplars":
        nan = float("nan")

        def f(v, default=nan):
            return default if v is None else v
        return cls(target=d["target"], top=[Exemplar.from_json(e) for e in d["top"]],
                   bottom=[Exemplar.from_json(e) for e in d["bottom"]],
                   max=f(d["max"]), min=f(d["min"]), mean=f(d["mean"]), std=f(d.get("std")),
                   n_windows=d["n_windows"], n_tokens=d["n_tokens"], density=f(d["density"]),
                   density_threshold=d["density_threshold"],
                   hist_edges=d["histogram"]["edges"], hist_counts=d["histogram"]["counts"],
                   bands=[Band(b["lo"], b["hi"], b["count"],
                               [Exemplar.from_json(e) for e in b["samples"]]) for b in d["bands"]],
                   controls=[Exemplar.from_json(e) for e in d["controls"]],
                   nonfinite=d.get("nonfinite", 0),
                   position_max=[f(v) for v in d.get("position_max", [])],
                   prefix_mean_max=[f(v) for v in d.get("prefix_mean_max", [])])


def _json_floats(xs) -> list:
    return [None if x is None or not math.isfinite(x) else float(x) for x in xs]

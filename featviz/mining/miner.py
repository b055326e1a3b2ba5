"""Exemplar mining: one streaming pass over a corpus for many targets at once.

Per target the miner keeps

* the top-k windows by their maximum (BOS excluded by default), with per-token values;
* samples from interval bands below the top (fractions of the corpus max, as SAE
  dashboards show them), drawn from per-cell reservoirs on a grid of window maxima;
* an exact histogram of every token's value on a grid anchored at 0 whose bin width
  doubles (merging neighbours) whenever a value falls outside it;
* the density (fraction of tokens above a threshold), mean, min and max;
* the values on a small shared random control group of windows.

Memory is O(targets x (k + cells x slots + controls) x window), whatever the corpus
length.  Everything is vectorised over targets, so thousands of neurons cost little
beyond the forward pass itself.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

import featviz.mining.corpus as corpus_mod
from featviz.errors import FeatvizError
from featviz.model.forward import MLP_POST, RESID_POST, Z, run
from featviz.targets.core import Atom, Target, all_sites
from featviz.targets.kinds import head_norms


@dataclass
class MineConfig:
    window: int = 63              # tokens per window after BOS
    max_tokens: int = 50_000      # corpus tokens read
    k: int = 20                   # top windows kept per target
    bands: int = 5                # interval bands of the corpus max (top band included)
    per_band: int = 3             # windows sampled per band
    cells: int = 32               # reservoir cells over [0, max) of window maxima
    slots: int = 2                # reservoir slots per cell
    hist_bins: int = 32           # histogram bins per sign (2 x hist_bins in all)
    density_threshold: float = 0.0
    controls: int = 5             # random control windows (shared by all targets)
    batch_size: int = 16
    include_bos: bool = False     # BOS is an attention sink on most models: off by default
    seed: int = 0

    def check(self) -> "MineConfig":
        for name in ("window", "k", "bands", "cells", "slots", "hist_bins", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise FeatvizError(f"mining option {name} must be a positive integer, got {v!r}")
        for name in ("cells", "hist_bins"):
            v = getattr(self, name)
            if v & (v - 1):
                raise FeatvizError(f"mining option {name} must be a power of two, got {v}")
        for name in ("per_band", "controls"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise FeatvizError(f"mining option {name} must be a non-negative integer, got {v!r}")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) \
                or self.max_tokens < self.window:
            raise FeatvizError(f"--tokens must be at least one window ({self.window} tokens), "
                               f"got {self.max_tokens!r}")
        return self

    def key(self) -> dict:
        """The settings that change what is mined (for cache keys)."""
        d = dict(self.__dict__)
        d.pop("batch_size")
        return d


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


@dataclass
class CorpusReference:
    """The corpus figure a target's synthetic value is divided by: the same quantity, on
    corpus text of the same shape, or None with the reason there is none."""

    value: float | None
    basis: str          # what the value is, or why there is none

    def ratio(self, v: float | None) -> float | None:
        if v is None or self.value is None or not self.value > 0:
            return None
        return v / self.value

    def to_json(self) -> dict:
        return {"value": self.value, "basis": self.basis}


def corpus_reference(ex: "TargetExemplars", target, length: int, prefix: int = 0,
                     suffix: int = 0) -> CorpusReference:
    """The like-for-like corpus figure for ``target`` dreamt as BOS + ``prefix`` fixed
    tokens + ``length`` optimised tokens + ``suffix`` fixed tokens.

    * @last and @max of a neuron, head or residual direction: the max over every corpus
      token, each read with its window's preceding context (the value of the target at
      one token of real text, as the dream's is);
    * @mean: the max over windows of the mean over their first ``length`` tokens (BOS +
      ``length`` tokens of real text: the dream's own shape);
    * @I: the max over windows of the value at position I (BOS + I tokens of real text);
    * attention probabilities, which depend on how many keys the query sees: the value at
      the dream's query position (@last: position ``length``; @max: the max over positions
      1..``length``) of windows cut to the dream's shape; keys counted from the end of the
      sequence have no such figure (the corpus windows have another end).
    With a fixed prefix or suffix, @mean, @I and attention targets read positions whose
    context is the fixed text, which no corpus window shares: no figure.
    """
    from featviz.targets.core import Atom
    none = lambda why: CorpusReference(None, why)  # noqa: E731
    if not isinstance(target, Atom):
        return none("a sum of targets has no single corpus figure")
    if not math.isfinite(ex.max):
        return none("no finite corpus value")
    red, T = target.reduction, 1 + prefix + length + suffix
    fixed = prefix or suffix
    if target.kind != "attn" and red in ("last", "max"):
        return CorpusReference(ex.max, "max over corpus tokens, each with its window's "
                                       "preceding context")
    if fixed:
        return none(f"@{red} {'attention ' if target.kind == 'attn' else ''}values read "
                    "positions whose context is the fixed prefix or suffix, which no corpus "
                    "text shares")
    if target.kind == "attn" and target.key < 0:
        return none(f"key {target.key} counts from the end of the sequence: in a "
                    f"{len(ex.position_max) - 1 or '?'}-token corpus window that is another "
                    f"token than in the dream's {length}")
    pos, pmean = ex.position_max, ex.prefix_mean_max
    W = len(pos) - 1
    if W < 1:
        return none("the mining record predates like-for-like figures; mine again")
    if length > W:
        return none(f"the dream's {length} tokens are longer than the corpus windows ({W})")

    def val(v, what):
        return CorpusReference(v, what) if v is not None and math.isfinite(v) else \
            none(f"no finite corpus value {what}")
    if red == "mean":
        return val(pmean[length], f"max over corpus windows of the mean over their first "
                                  f"{length} tokens (BOS + {length} tokens, the dream's shape)")
    if red == "last":
        return val(pos[length], f"max over corpus windows of the value at position {length} "
                                f"(BOS + {length} tokens, the dream's shape)")
    if red == "max":
        body = [v for v in pos[1:length + 1] if v is not None and math.isfinite(v)]
        return val(max(body) if body else None, f"max over corpus windows of the max over "
                                                f"positions 1-{length} (the dream's shape)")
    i = int(red) % T
    if i > W:
        return none(f"position {i} lies beyond the corpus windows ({W} tokens)")
    return val(pos[i], f"max over corpus windows of the value at position {i} (BOS + {i} "
                       "tokens of real text)")


# ---------------------------------------------------------------- batched reading
def read_all(captures: dict, targets: list[Target], handle) -> torch.Tensor:
    """Per-position values of many targets, shape (n_targets, batch, seq).

    Neurons and basis dimensions of one site are gathered with one index; head norms
    are computed once per layer; anything else is read target by target.
    """
    groups: dict = {}
    single: list = []
    for i, t in enumerate(targets):
        plain = type(t) is Atom          # subclasses may read differently: ask them
        if plain and (t.kind in ("mlp", "head") or (t.kind == "resid" and t.file is None)):
            groups.setdefault(t.site, []).append(i)
        else:
            single.append(i)
    parts = []                                            # (target positions, (n, B, S) values)
    for site, idx in groups.items():
        x = captures[site]
        if site[0] == Z:
            x = head_norms(x, handle.n_heads, handle.head_dim)
        elif site[0] not in (MLP_POST, RESID_POST):  # pragma: no cover
            raise ValueError(site)
        sel = [targets[i].index for i in idx]
        vals = x if sel == list(range(x.shape[-1])) else \
            x.index_select(-1, torch.as_tensor(sel, device=x.device))  # all units: no gather
        parts.append((idx, vals.permute(2, 0, 1)))
    for i in single:
        parts.append(([i], targets[i].per_position(captures, handle)[None]))
    order = [i for idx, _ in parts for i in idx]
    if order == list(range(len(targets))):                # the usual case: already in order
        return parts[0][1] if len(parts) == 1 else torch.cat([v for _, v in parts])
    out = torch.empty((len(targets),) + parts[0][1].shape[1:], dtype=parts[0][1].dtype,
                      device=parts[0][1].device)
    for idx, v in parts:
        out[torch.as_tensor(idx, device=v.device)] = v.to(out.dtype)
    return out


# ---------------------------------------------------------------- the grid
def _fit_width(width: np.ndarray, need: np.ndarray, n_bins: int) -> np.ndarray:
    """Doublings per target so that ``need`` < n_bins * width (0 where it already fits)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = need / (n_bins * width)
    d = np.zeros(len(width), dtype=np.int64)
    big = np.isfinite(ratio) & (ratio >= 1)
    d[big] = np.floor(np.log2(ratio[big])).astype(np.int64) + 1
    return d


def _merge_pairs(a: np.ndarray, times: int, axis_from_zero: bool) -> np.ndarray:
    """Merge neighbouring bins ``times`` times along the last axis.

    ``axis_from_zero``: bins count outward from zero (positive side); otherwise they
    count inward to zero (negative side, bin -1 is the one next to zero).
    """
    n = a.shape[-1]
    f = 2 ** min(times, 62)
    if f >= n:
        merged = a.sum(axis=-1, keepdims=True)
        pad = np.zeros(a.shape[:-1] + (n - 1,), dtype=a.dtype)
        return np.concatenate([merged, pad] if axis_from_zero else [pad, merged], axis=-1)
    if axis_from_zero:
        m = a.reshape(a.shape[:-1] + (n // f, f)).sum(-1)
        return np.concatenate([m, np.zeros(a.shape[:-1] + (n - n // f,), dtype=a.dtype)], -1)
    m = a[..., ::-1].reshape(a.shape[:-1] + (n // f, f)).sum(-1)[..., ::-1]
    return np.concatenate([np.zeros(a.shape[:-1] + (n - n // f,), dtype=a.dtype), m], -1)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: uint64 -> well-mixed uint64 (vectorised, wraps on overflow)."""
    x = x.astype(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _target_keys(targets, seed: int) -> np.ndarray:
    """One 64-bit key per target, from its name and the seed, so each target's random
    samples do not depend on which other targets are mined in the same pass."""
    return np.array([int.from_bytes(hashlib.sha256(f"{seed}:{t}".encode()).digest()[:8], "little")
                     for t in targets], dtype=np.uint64)


def _uniform(keys, counters) -> np.ndarray:
    """Uniform (0, 1) draws, a pure function of (key, counter) (arrays broadcast)."""
    with np.errstate(over="ignore"):
        x = _mix(np.asarray(keys, dtype=np.uint64)
                 ^ _mix(np.asarray(counters, dtype=np.int64).astype(np.uint64)))
    return ((x >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def _weighted_pick(weights: np.ndarray, u: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` draws without replacement, probability proportional to weight,
    along the last axis (Efraimidis-Spirakis keys; weight 0 is never picked first)."""
    with np.errstate(divide="ignore"):
        key = np.where(weights > 0, np.log(u) / np.where(weights > 0, weights, 1.0), -np.inf)
    return np.argsort(-key, axis=-1, kind="stable")[..., :n], key


class Miner:
    """Streaming state for many targets; feed it batches, then ``finish``."""

    def __init__(self, targets: list[Target], cfg: MineConfig, width: int):
        self.targets, self.cfg, self.W = list(targets), cfg, width
        T, k, C, S, G = len(targets), cfg.k, cfg.cells, cfg.slots, cfg.hist_bins
        self.rng = np.random.default_rng(cfg.seed)          # controls (shared by all targets)
        self.keys = _target_keys(targets, cfg.seed)          # per-target sampling
        self.top_v = np.full((T, k), -np.inf)
        self.top_win = np.full((T, k), -1, dtype=np.int64)
        self.top_peak = np.zeros((T, k), dtype=np.int64)
        self.top_ids = np.zeros((T, k, width), dtype=np.int32)
        self.top_acts = np.zeros((T, k, width), dtype=np.float32)
        self.hist = np.zeros((T, 2 * G), dtype=np.int64)
        self.hist_w = np.full(T, np.nan)
        self.n_above = np.zeros(T, dtype=np.int64)
        self.n_tok = 0
        self.n_win = 0
        self.total = np.zeros(T)
        self.total2 = np.zeros(T)
        self.vmin = np.full(T, np.inf)
        self.vmax = np.full(T, -np.inf)
        self.nonfinite = np.zeros(T, dtype=np.int64)
        self.cell_w = np.full(T, np.nan)
        self.seen = np.zeros((T, C), dtype=np.int64)
        self.s_v = np.full((T, C, S), np.nan, dtype=np.float32)
        self.s_win = np.full((T, C, S), -1, dtype=np.int64)
        self.s_peak = np.zeros((T, C, S), dtype=np.int64)
        self.s_ids = np.zeros((T, C, S, width), dtype=np.int32)
        self.s_acts = np.zeros((T, C, S, width), dtype=np.float32)
        n_c = cfg.controls
        self.c_seen = 0
        self.c_win = np.full(n_c, -1, dtype=np.int64)
        self.c_ids = np.zeros((n_c, width), dtype=np.int32)
        self.c_acts = np.zeros((T, n_c, width), dtype=np.float32)
        self.pos_max = np.full((T, width), -np.inf)            # see corpus_reference
        self.pmean_max = np.full((T, width), -np.inf)

    # -- one batch: per (T, B, W) values, (B, W) ids, window indices (B,) --
    def update(self, per, ids: np.ndarray, win: np.ndarray) -> None:
        """per: (T, B, W) values as a CPU torch tensor or numpy array.  The full-size
        reductions run in torch (multi-threaded); the bookkeeping on small arrays in numpy."""
        cfg = self.cfg
        per_t = torch.as_tensor(per, dtype=torch.float32).contiguous()
        per = per_t.numpy()
        T, B, _ = per.shape
        start = 0 if cfg.include_bos else 1
        body = per_t[:, :, start:]
        finite = torch.isfinite(body)
        clean = bool(finite.all())
        if clean:                             # the common case: no masking passes needed
            mx = body.max(dim=2)
        else:
            self.nonfinite += (~finite).reshape(T, -1).sum(1).numpy()
            mx = torch.where(finite, body, -torch.inf).max(dim=2)
        wmax, peak = mx.values.numpy(), mx.indices.numpy() + start                  # (T, B)
        self._topk(wmax, peak, per, ids, win)
        self._histogram(body.reshape(T, -1), None if clean else finite.reshape(T, -1),
                        mx.values.amax(dim=1))
        self._reservoir(wmax, peak, per, ids, win)
        self._controls(per, ids, win)
        self._by_position(per_t)
        self.n_tok += B * body.shape[2]
        self.n_win += B

    def _topk(self, wmax, peak, per, ids, win):
        """Keep each target's k best windows in k unordered slots: a newcomer overwrites an
        evicted slot, so only entering windows are copied (sorted once, in ``finish``)."""
        k, B = self.cfg.k, wmax.shape[1]
        rows = np.nonzero((wmax > self.top_v.min(1, keepdims=True)).any(1))[0]
        if not len(rows):
            return
        cand = np.concatenate([self.top_v[rows], wmax[rows]], axis=1)            # (R, k+B)
        cwin = np.concatenate([np.where(self.top_win[rows] < 0, np.iinfo(np.int64).max,
                                        self.top_win[rows]), np.broadcast_to(win, (len(rows), B))], 1)
        keep = np.zeros(cand.shape, dtype=bool)        # best k; ties go to the earlier window
        np.put_along_axis(keep, np.lexsort((cwin, -cand), axis=-1)[:, :k], True, axis=1)
        # evicted slots (old, not kept) first; entering newcomers (new, kept) first
        evicted = np.argsort(keep[:, :k], axis=1, kind="stable")                 # (R, k)
        entering = np.argsort(~keep[:, k:], axis=1, kind="stable")               # (R, B)
        m = keep[:, k:].sum(1)
        for j in range(int(m.max())):
            sel = m > j
            r, slot, b = rows[sel], evicted[sel, j], entering[sel, j]
            self.top_v[r, slot] = wmax[r, b]
            self.top_win[r, slot] = win[b]
            self.top_peak[r, slot] = peak[r, b]
            self.top_ids[r, slot] = ids[b]
            self.top_acts[r, slot] = per[r, b]

    def _histogram(self, flat: torch.Tensor, valid: torch.Tensor | None, vmax: torch.Tensor):
        """flat: (T, N) torch values; valid: finite mask, or None when all are finite;
        vmax: (T,) the batch's max over finite values (from the window maxima)."""
        G = self.cfg.hist_bins
        T = flat.shape[0]
        if valid is not None:
            lo_f = torch.where(valid, flat, torch.inf)
            flat = torch.where(valid, flat, 0.0)
        else:
            lo_f = flat
        vmax, vmin = vmax.double().numpy(), lo_f.amin(dim=1).double().numpy()
        self.vmax = np.fmax(self.vmax, vmax)
        self.vmin = np.fmin(self.vmin, vmin)
        absmax = np.maximum(np.abs(np.where(np.isfinite(vmax), vmax, 0.0)),
                            np.abs(np.where(np.isfinite(vmin), vmin, 0.0)))
        new = np.isnan(self.hist_w)
        self.hist_w[new] = np.where(absmax[new] > 0, absmax[new] / G * 3.0, 1e-6)
        d = _fit_width(self.hist_w, absmax, G)
        for t in np.nonzero(d)[0]:
            self.hist[t, G:] = _merge_pairs(self.hist[t, G:], int(d[t]), True)
            self.hist[t, :G] = _merge_pairs(self.hist[t, :G], int(d[t]), False)
            self.hist_w[t] *= 2.0 ** int(d[t])
        inv = torch.from_numpy((1.0 / self.hist_w).astype(np.float32))[:, None]
        b = (flat * inv).floor_().clamp_(-G, G - 1)        # bin, then the target's offset
        if T * 2 * G < 2 ** 24:                             # (exact in float32: one pass fewer)
            b += torch.arange(G, T * 2 * G, 2 * G, dtype=torch.float32)[:, None]
            b = b.long()
        else:
            b = b.long() + torch.arange(G, T * 2 * G, 2 * G)[:, None]
        b = b[valid] if valid is not None else b.reshape(-1)
        self.hist += torch.bincount(b, minlength=T * 2 * G).reshape(T, 2 * G).numpy()
        above = flat > self.cfg.density_threshold
        if valid is not None:
            above &= valid
        self.n_above += above.sum(1).numpy()
        self.total += flat.sum(1).double().numpy()        # per batch in float32, then float64
        self.total2 += torch.linalg.vecdot(flat, flat, dim=1).double().numpy()

    def _reservoir(self, wmax, peak, per, ids, win):
        C, S = self.cfg.cells, self.cfg.slots
        T, B = wmax.shape
        pos = np.where(np.isfinite(wmax), wmax, 0.0)
        need = pos.max(1)
        new = np.isnan(self.cell_w) & (need > 0)
        self.cell_w[new] = need[new] / C * 3.0       # headroom: fewer coarsenings later
        d = _fit_width(np.where(np.isnan(self.cell_w), 1.0, self.cell_w), need, C)
        d[np.isnan(self.cell_w)] = 0
        for t in np.nonzero(d)[0]:
            self._coarsen(t, int(d[t]))
        rows = np.arange(T)
        for b in range(B):
            ok = (wmax[:, b] > 0) & np.isfinite(wmax[:, b]) & ~np.isnan(self.cell_w)
            if not ok.any():
                continue
            cell = np.zeros(T, dtype=np.int64)
            cell[ok] = np.minimum((wmax[ok, b] / self.cell_w[ok]).astype(np.int64), C - 1)
            self.seen[rows[ok], cell[ok]] += 1
            n = self.seen[rows, cell]
            u = _uniform(self.keys, int(win[b]))
            j = np.where(n <= S, n - 1, (u * np.maximum(n, 1)).astype(np.int64))
            hit = ok & (j < S)
            t_i, c_i, j_i = rows[hit], cell[hit], j[hit]
            self.s_v[t_i, c_i, j_i] = wmax[hit, b]
            self.s_win[t_i, c_i, j_i] = win[b]
            self.s_peak[t_i, c_i, j_i] = peak[hit, b]
            self.s_ids[t_i, c_i, j_i] = ids[b]
            self.s_acts[t_i, c_i, j_i] = per[hit, b]

    def _coarsen(self, t: int, times: int) -> None:
        """Double target t's cell width ``times`` times, merging reservoirs pairwise."""
        C, S = self.cfg.cells, self.cfg.slots
        half, pad = (C + 1) // 2, C % 2
        for step in range(min(times, int(math.log2(C)) + 1)):
            arrays = [self.s_v[t], self.s_win[t], self.s_peak[t], self.s_ids[t], self.s_acts[t]]
            fills = [np.nan, -1, 0, 0, 0]
            held = arrays[1] >= 0
            # each kept sample stands for seen/held windows of its cell
            w = np.where(held, (self.seen[t] / np.maximum(held.sum(1), 1))[:, None], 0.0)

            def pairs(a, fill):
                if pad:
                    a = np.concatenate([a, np.full((1,) + a.shape[1:], fill, a.dtype)])
                return a.reshape((half, 2 * S) + a.shape[2:])

            wp = pairs(w, 0.0)
            u = _uniform(self.keys[t], np.arange(wp.size) + (self.n_win * 64 + step) * wp.size)
            order, key = _weighted_pick(wp, u.reshape(wp.shape), S)
            ok = np.take_along_axis(key, order, 1) > -np.inf                    # (half, S)
            for i, (a, fill) in enumerate(zip(arrays, fills)):
                ap = pairs(a, fill)
                idx = order.reshape(order.shape + (1,) * (ap.ndim - 2))
                sel = np.take_along_axis(ap, idx, 1)
                sel[~ok] = fill
                out = np.full_like(a, fill)
                out[:half] = sel
                arrays[i][...] = out
            seen = np.concatenate([self.seen[t], [0] * pad])
            new_seen = np.zeros_like(self.seen[t])
            new_seen[:half] = seen.reshape(half, 2).sum(1)
            self.seen[t] = new_seen
        self.cell_w[t] *= 2.0 ** times

    def _by_position(self, per_t: torch.Tensor) -> None:
        """Running maxima over windows of each position's value and of the mean over the
        first m tokens after BOS (non-finite values never count)."""
        v = torch.where(torch.isfinite(per_t), per_t, -torch.inf)
        self.pos_max = np.fmax(self.pos_max, v.amax(dim=1).double().numpy())
        body = per_t[:, :, 1:].double()
        m = torch.arange(1, body.shape[2] + 1, dtype=torch.float64)
        means = body.cumsum(dim=2) / m
        means = torch.where(torch.isfinite(means), means, -torch.inf)
        self.pmean_max[:, 1:] = np.fmax(self.pmean_max[:, 1:], means.amax(dim=1).numpy())

    def _controls(self, per, ids, win):
        n_c = self.cfg.controls
        for b in range(len(win)):
            self.c_seen += 1
            j = self.c_seen - 1 if self.c_seen <= n_c else int(self.rng.integers(self.c_seen))
            if j < n_c:
                self.c_win[j] = win[b]
                self.c_ids[j] = ids[b]
                self.c_acts[:, j] = per[:, b]

    # -- results --
    def finish(self) -> list[TargetExemplars]:
        cfg, G = self.cfg, self.cfg.hist_bins
        out = []
        order_c = np.argsort(self.c_win[self.c_win >= 0])
        valid_c = np.nonzero(self.c_win >= 0)[0][order_c]
        s0 = 0 if cfg.include_bos else 1
        unused = self.top_win < 0
        order = np.lexsort((np.where(unused, np.iinfo(np.int64).max, self.top_win), -self.top_v),
                           axis=-1)                      # slots -> ranks (ties: earlier window)
        for name in ("top_v", "top_win", "top_peak"):
            setattr(self, name, np.take_along_axis(getattr(self, name), order, 1))
        self.top_ids = np.take_along_axis(self.top_ids, order[:, :, None], 1)
        self.top_acts = np.take_along_axis(self.top_acts, order[:, :, None], 1)
        top_v, top_peak, top_win = self.top_v.tolist(), self.top_peak.tolist(), self.top_win.tolist()
        bands_all = self._bands_all()
        c_ids = self.c_ids.tolist()
        c_acts = self.c_acts[:, valid_c].tolist()
        c_max = self.c_acts[:, valid_c, s0:].max(axis=2) if len(valid_c) else None
        c_peak = self.c_acts[:, valid_c, s0:].argmax(axis=2) + s0 if len(valid_c) else None
        for t, target in enumerate(self.targets):
            r = TargetExemplars(str(target), density_threshold=cfg.density_threshold)
            r.n_windows, r.n_tokens = self.n_win, self.n_tok
            r.nonfinite = int(self.nonfinite[t])
            n_ok = self.n_tok - r.nonfinite
            rows_i, rows_a = list(self.top_ids[t]), list(self.top_acts[t])   # row views
            r.top = [Exemplar(v, p, w, rows_i[i], rows_a[i])
                     for i, (v, p, w) in enumerate(zip(top_v[t], top_peak[t], top_win[t])) if w >= 0]
            if n_ok > 0:
                r.max, r.min = float(self.vmax[t]), float(self.vmin[t])
                r.mean = float(self.total[t] / n_ok)
                r.std = float(math.sqrt(max(self.total2[t] / n_ok - r.mean ** 2, 0.0)))
                r.density = float(self.n_above[t] / n_ok)
                w = float(self.hist_w[t])
                r.hist_edges = [float(w * i) for i in range(-G, G + 1)]
                r.hist_counts = self.hist[t].tolist()
            else:
                r.max = r.min = r.mean = r.std = r.density = float("nan")
            r.bands = bands_all[t]
            r.position_max = [float(x) for x in self.pos_max[t]]
            r.prefix_mean_max = [float("nan")] + [float(x) for x in self.pmean_max[t, 1:]]
            r.controls = [Exemplar(float(c_max[t, i]), int(c_peak[t, i]), int(self.c_win[j]),
                                   c_ids[j], c_acts[t][i]) for i, j in enumerate(valid_c)]
            out.append(r)
        return out

    def _bands_all(self) -> list[list[Band]]:
        """Interval bands of every target at once: per band, the windows whose max lies
        in (lo, hi] of the corpus max (counted from the reservoir cells inside the band)
        and up to ``per_band`` samples drawn from the reservoirs, weighted by how many
        windows each kept sample stands for, top-k windows excluded.  The draws are a
        pure function of (seed, target name, slot, band)."""
        cfg = self.cfg
        T, C, S, nb = len(self.targets), cfg.cells, cfg.slots, cfg.bands
        mx = self.vmax
        ok_t = np.isfinite(mx) & (mx > 0) & ~np.isnan(self.cell_w)
        safe_mx = np.where(ok_t, mx, 1.0)[:, None]
        cw = np.where(ok_t, self.cell_w, 0.0)[:, None]
        # counts: a cell's windows go to the band holding its midpoint (exact to one cell)
        mid = np.minimum((np.arange(C) + 0.5)[None] * cw, safe_mx)
        cell_band = np.clip(np.ceil(mid / safe_mx * nb).astype(np.int64) - 1, 0, nb - 1)
        counts = np.zeros((T, nb), dtype=np.int64)
        np.add.at(counts, (np.repeat(np.arange(T), C), cell_band.ravel()), self.seen.ravel())
        # samples
        v = self.s_v.reshape(T, C * S).astype(np.float64)
        win = self.s_win.reshape(T, C * S)
        held = win >= 0
        n_held = held.reshape(T, C, S).sum(2)
        w = np.where(held, np.repeat(self.seen / np.maximum(n_held, 1), S, axis=1), 0.0)
        in_top = (win[:, :, None] == self.top_win[:, None, :]).any(-1)
        with np.errstate(invalid="ignore"):
            band = np.clip(np.ceil(v / safe_mx * nb).astype(np.float64) - 1, 0, nb - 1)
            ok = held & ~in_top & (v > 0) & ok_t[:, None] & (w > 0)
        band = np.where(ok, band, 0).astype(np.int64)
        picks = None
        if cfg.per_band and ok.any():
            slot = np.arange(C * S)[None]
            u = _uniform(self.keys[:, None], slot + band * 100_003)
            key = np.where(ok, np.log(u) / np.where(ok, w, 1.0), -np.inf)
            n = min(cfg.per_band, C * S)
            picks = []
            for bi in range(nb):
                kb = np.where(band == bi, key, -np.inf)
                order = np.argsort(-kb, axis=1, kind="stable")[:, :n]           # (T, n)
                good = np.take_along_axis(kb, order, 1) > -np.inf
                vals = np.where(good, np.take_along_axis(v, order, 1), -np.inf)
                rank = np.argsort(-vals, axis=1, kind="stable")                 # best first
                picks.append((np.take_along_axis(order, rank, 1).tolist(),
                              np.take_along_axis(good, rank, 1).tolist()))
        out = []
        ids = self.s_ids.reshape(T, C * S, -1)
        acts = self.s_acts.reshape(T, C * S, -1)
        peak, win_l = self.s_peak.reshape(T, C * S).tolist(), win.tolist()
        v_l, counts_l = v.tolist(), counts.tolist()
        for t in range(T):
            if not ok_t[t]:
                out.append([])
                continue
            bands = []
            for bi in range(nb):
                b = Band(bi / nb, (bi + 1) / nb, counts_l[t][bi], [])
                if picks is not None:
                    order, good = picks[bi]
                    for j, g in zip(order[t], good[t]):
                        if g:
                            b.samples.append(Exemplar(v_l[t][j], peak[t][j], win_l[t][j],
                                                      ids[t, j], acts[t, j]))
                bands.append(b)
            out.append(bands)
        return out


def mine(handle, targets: list[Target], config: MineConfig | None = None, *,
         source: str | None = None, progress: bool = True) -> list[TargetExemplars]:
    """Read every target on every corpus window in one streaming pass.  ``source``: the
    corpus (a file, folder or ``hf:`` name; None: the embedded Wikipedia summaries)."""
    cfg = (config or MineConfig()).check()
    if not targets:
        return []
    sites = all_sites(targets)
    miner = Miner(targets, cfg, cfg.window + 1)
    total = cfg.max_tokens // cfg.window
    bar = tqdm(total=total * cfg.window, unit="tok", desc="mining", disable=not progress,
               leave=False)
    for batch in corpus_mod.batched(corpus_mod.windows(handle, source, cfg.window,
                                                       max_tokens=cfg.max_tokens), cfg.batch_size):
        ids = np.stack([w.ids for w in batch])
        with torch.no_grad():
            caps, _ = run(handle, sites, input_ids=torch.as_tensor(ids, device=handle.device))
            per = read_all(caps, targets, handle).float().cpu()
        miner.update(per, ids.astype(np.int32), np.asarray([w.index for w in batch]))
        bar.update(len(batch) * cfg.window)
    bar.close()
    return miner.finish()


def scan(handle, targets: list[Target], source: str | None = None, *, window: int = 63,
         max_tokens: int = 50_000, k: int = 20, batch_size: int = 16,
         progress: bool = True) -> list[TargetExemplars]:
    """Top-k exemplars only (no bands or controls): the quick form used by ``query``."""
    cfg = MineConfig(window=window, max_tokens=max_tokens, k=k, batch_size=batch_size,
                     per_band=0, controls=0)
    return mine(handle, targets, cfg, source=source, progress=progress)

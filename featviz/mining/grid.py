"""Pure helpers of the miner's accumulators: grids whose bins double in width (merging
neighbours), and random draws that are a pure function of (key, counter), so a target's
samples do not depend on the batch size or on the other targets mined beside it."""
from __future__ import annotations

import hashlib

import numpy as np


def fit_width(width: np.ndarray, need: np.ndarray, n_bins: int) -> np.ndarray:
    """Doublings per target so that ``need`` < n_bins * width (0 where it already fits)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = need / (n_bins * width)
    d = np.zeros(len(width), dtype=np.int64)
    big = np.isfinite(ratio) & (ratio >= 1)
    d[big] = np.floor(np.log2(ratio[big])).astype(np.int64) + 1
    return d


def pow2_width(need: np.ndarray, n_bins: int) -> np.ndarray:
    """The smallest power of two w with need < n_bins * w (2**-30 where need <= 0).  Widths
    that are powers of two depend only on the largest value seen, not on the order the
    values came in, so grids of separate passes merge exactly (the finer one coarsened)."""
    need = np.asarray(need, dtype=np.float64)
    out = np.full(need.shape, 2.0 ** -30)
    pos = np.isfinite(need) & (need > 0)
    out[pos] = np.maximum(2.0 ** (np.floor(np.log2(need[pos] / n_bins)) + 1), 2.0 ** -30)
    return out


def merge_pairs(a: np.ndarray, times: int, axis_from_zero: bool) -> np.ndarray:
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


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: uint64 -> well-mixed uint64 (vectorised, wraps on overflow)."""
    x = x.astype(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def target_keys(targets, seed: int) -> np.ndarray:
    """One 64-bit key per target, from its name and the seed, so each target's random
    samples do not depend on which other targets are mined in the same pass."""
    return np.array([int.from_bytes(hashlib.sha256(f"{seed}:{t}".encode()).digest()[:8], "little")
                     for t in targets], dtype=np.uint64)


def uniform(keys, counters) -> np.ndarray:
    """Uniform (0, 1) draws, a pure function of (key, counter) (arrays broadcast)."""
    with np.errstate(over="ignore"):
        x = mix(np.asarray(keys, dtype=np.uint64)
                ^ mix(np.asarray(counters, dtype=np.int64).astype(np.uint64)))
    return ((x >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def weighted_pick(weights: np.ndarray, u: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` draws without replacement, probability proportional to weight,
    along the last axis (Efraimidis-Spirakis keys; weight 0 is never picked first)."""
    with np.errstate(divide="ignore"):
        key = np.where(weights > 0, np.log(u) / np.where(weights > 0, weights, 1.0), -np.inf)
    return np.argsort(-key, axis=-1, kind="stable")[..., :n], key

"""The miner's accumulators: each keeps one kind of streaming summary for many targets
at once, fed one window batch at a time (``update``), read once at the end.

* ``TopK``: each target's k best windows by their max, with ids and per-token values;
* ``Moments``: extremes, mean and variance, density and an exact histogram on a grid
  anchored at 0 whose bin width doubles (merging neighbours) when a value falls outside;
* ``BandReservoir``: per-cell reservoirs on a grid of window maxima, from which the
  interval bands below the top are sampled (as SAE dashboards show them);
* ``Controls``: a small random control group of windows shared by all targets;
* ``PositionMaxima``: maxima over windows of each position's value and of the mean over
  the first m tokens (the like-for-like corpus figures of ``@I`` and ``@mean`` targets).

Memory is O(targets x (k + cells x slots + controls) x window), whatever the corpus length.

Every accumulator is a function of the set of windows it saw, not of their order: grids
have power-of-two widths fixed by the largest value, samples are the windows of least
priority (a pure function of the seed, the target and the window index).  So ``merge``
of the states of separate passes over disjoint windows (corpus shards, Ray workers)
equals one pass over all of them, provided the parts are whole batches of the one pass
(``miner.mine_part``): each batch's float sums are then the same, and they are added up
exactly at the end.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from featviz.mining.grid import fit_width, merge_pairs, pow2_width, target_keys, uniform
from featviz.mining.records import Band, Exemplar


# ---------------------------------------------------------------- accumulators
class TopK:
    """Each target's k best windows in k unordered slots: a newcomer overwrites an evicted
    slot, so only entering windows are copied; ``ranked`` sorts them once at the end."""

    def __init__(self, n_targets: int, k: int, width: int):
        self.k = k
        self.v = np.full((n_targets, k), -np.inf)
        self.win = np.full((n_targets, k), -1, dtype=np.int64)
        self.peak = np.zeros((n_targets, k), dtype=np.int64)
        self.ids = np.zeros((n_targets, k, width), dtype=np.int32)
        self.acts = np.zeros((n_targets, k, width), dtype=np.float32)

    def update(self, wmax, peak, per, ids, win) -> None:
        k, B = self.k, wmax.shape[1]
        rows = np.nonzero((wmax > self.v.min(1, keepdims=True)).any(1))[0]
        if not len(rows):
            return
        cand = np.concatenate([self.v[rows], wmax[rows]], axis=1)               # (R, k+B)
        cwin = np.concatenate([np.where(self.win[rows] < 0, np.iinfo(np.int64).max,
                                        self.win[rows]), np.broadcast_to(win, (len(rows), B))], 1)
        keep = np.zeros(cand.shape, dtype=bool)        # best k; ties go to the earlier window
        np.put_along_axis(keep, np.lexsort((cwin, -cand), axis=-1)[:, :k], True, axis=1)
        # evicted slots (old, not kept) first; entering newcomers (new, kept) first
        evicted = np.argsort(keep[:, :k], axis=1, kind="stable")                 # (R, k)
        entering = np.argsort(~keep[:, k:], axis=1, kind="stable")               # (R, B)
        m = keep[:, k:].sum(1)
        for j in range(int(m.max())):
            sel = m > j
            r, slot, b = rows[sel], evicted[sel, j], entering[sel, j]
            self.v[r, slot] = wmax[r, b]
            self.win[r, slot] = win[b]
            self.peak[r, slot] = peak[r, b]
            self.ids[r, slot] = ids[b]
            self.acts[r, slot] = per[r, b]

    def merge(self, o: "TopK") -> None:
        """Keep the best k of both (ties: the earlier window)."""
        k = self.k
        v = np.concatenate([self.v, o.v], 1)
        win = np.concatenate([self.win, o.win], 1)
        order = np.lexsort((np.where(win < 0, np.iinfo(np.int64).max, win), -v), axis=-1)[:, :k]
        take = lambda a, b: np.take_along_axis(np.concatenate([a, b], 1),  # noqa: E731
                                               order.reshape(order.shape + (1,) * (a.ndim - 2)), 1)
        self.v, self.win = take(self.v, o.v), take(self.win, o.win)
        self.peak, self.ids, self.acts = take(self.peak, o.peak), take(self.ids, o.ids), \
            take(self.acts, o.acts)

    def ranked(self) -> list[list[Exemplar]]:
        """Per target, its windows best first (ties: the earlier window)."""
        unused = self.win < 0
        order = np.lexsort((np.where(unused, np.iinfo(np.int64).max, self.win), -self.v),
                           axis=-1)                      # slots -> ranks
        for name in ("v", "win", "peak"):
            setattr(self, name, np.take_along_axis(getattr(self, name), order, 1))
        self.ids = np.take_along_axis(self.ids, order[:, :, None], 1)
        self.acts = np.take_along_axis(self.acts, order[:, :, None], 1)
        v, peak, win = self.v.tolist(), self.peak.tolist(), self.win.tolist()
        out = []
        for t in range(len(v)):
            rows_i, rows_a = list(self.ids[t]), list(self.acts[t])           # row views
            out.append([Exemplar(a, p, w, rows_i[i], rows_a[i])
                        for i, (a, p, w) in enumerate(zip(v[t], peak[t], win[t])) if w >= 0])
        return out


class Moments:
    """Extremes, sums for mean and variance, density above a threshold, non-finite count
    and the exact histogram, for every target."""

    def __init__(self, n_targets: int, bins: int, threshold: float):
        self.G, self.threshold = bins, threshold
        self.hist = np.zeros((n_targets, 2 * bins), dtype=np.int64)
        self.hist_w = np.full(n_targets, np.nan)
        self.n_above = np.zeros(n_targets, dtype=np.int64)
        self.sums: list = []           # per batch: (sum, sum of squares) per target, float64;
        self._totals = None            # added exactly (fsum) at the end: order-free
        self.vmin = np.full(n_targets, np.inf)
        self.vmax = np.full(n_targets, -np.inf)
        self.nonfinite = np.zeros(n_targets, dtype=np.int64)

    def update(self, flat: torch.Tensor, valid: torch.Tensor | None, vmax: torch.Tensor):
        """flat: (T, N) torch values; valid: finite mask, or None when all are finite;
        vmax: (T,) the batch's max over finite values (from the window maxima)."""
        G = self.G
        T = flat.shape[0]
        if valid is not None:
            self.nonfinite += (~valid).sum(1).numpy()
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
        self.hist_w[new] = pow2_width(absmax[new], G)
        d = fit_width(self.hist_w, absmax, G)
        for t in np.nonzero(d)[0]:
            self.hist[t, G:] = merge_pairs(self.hist[t, G:], int(d[t]), True)
            self.hist[t, :G] = merge_pairs(self.hist[t, :G], int(d[t]), False)
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
        above = flat > self.threshold
        if valid is not None:
            above &= valid
        self.n_above += above.sum(1).numpy()
        self.sums.append(np.stack([flat.sum(1).double().numpy(),        # per batch in float32
                                   torch.linalg.vecdot(flat, flat, dim=1).double().numpy()]))
        self._totals = None

    def totals(self) -> np.ndarray:
        """(2, T): the exactly rounded sums over batches of the per-batch sums and sums of
        squares (the same whatever order or split the batches came in)."""
        if self._totals is None:
            T = len(self.hist_w)
            if not self.sums:
                self._totals = np.zeros((2, T))
            else:
                a = np.stack(self.sums)                                   # (batches, 2, T)
                self._totals = np.array([[math.fsum(a[:, j, t]) for t in range(T)]
                                         for j in range(2)])
        return self._totals

    def merge(self, o: "Moments") -> None:
        G = self.G
        for t in range(len(self.hist_w)):
            if np.isnan(o.hist_w[t]):
                continue
            if np.isnan(self.hist_w[t]):
                self.hist[t], self.hist_w[t] = o.hist[t], o.hist_w[t]
                continue
            w = max(self.hist_w[t], o.hist_w[t])
            for h, wi in ((self.hist, self.hist_w[t]), (o.hist, o.hist_w[t])):
                d = int(round(np.log2(w / wi)))
                if d:
                    h[t, G:] = merge_pairs(h[t, G:], d, True)
                    h[t, :G] = merge_pairs(h[t, :G], d, False)
            self.hist[t] += o.hist[t]
            self.hist_w[t] = w
        self.n_above += o.n_above
        self.sums += o.sums
        self._totals = None
        self.vmin, self.vmax = np.fmin(self.vmin, o.vmin), np.fmax(self.vmax, o.vmax)
        self.nonfinite += o.nonfinite

    def fill(self, r, t: int, n_tokens: int) -> None:
        """Write target t's figures into its ``TargetExemplars``."""
        r.nonfinite = int(self.nonfinite[t])
        n_ok = n_tokens - r.nonfinite
        if n_ok <= 0:
            r.max = r.min = r.mean = r.std = r.density = float("nan")
            return
        r.max, r.min = float(self.vmax[t]), float(self.vmin[t])
        total, total2 = self.totals()[:, t]
        r.mean = float(total / n_ok)
        r.std = float(math.sqrt(max(total2 / n_ok - r.mean ** 2, 0.0)))
        r.density = float(self.n_above[t] / n_ok)
        w = float(self.hist_w[t])
        r.hist_edges = [float(w * i) for i in range(-self.G, self.G + 1)]
        r.hist_counts = self.hist[t].tolist()


class BandReservoir:
    """Samples of windows on a grid of cells over [0, max) of window maxima (power-of-two
    cell widths that double, merging cells pairwise, as the max grows).  Each cell keeps
    its ``slots`` windows of least priority, a uniform sample of the cell whatever order
    the windows came in.  ``bands`` draws each interval band's samples from them."""

    _ARRAYS = ("prio", "v", "win", "peak", "ids", "acts")
    _FILLS = (np.inf, np.nan, -1, 0, 0, 0)

    def __init__(self, keys: np.ndarray, cells: int, slots: int, width: int):
        T, C, S = len(keys), cells, slots
        self.keys, self.C, self.S = keys, C, S
        self.cell_w = np.full(T, np.nan)
        self.seen = np.zeros((T, C), dtype=np.int64)
        self.prio = np.full((T, C, S), np.inf)
        self.v = np.full((T, C, S), np.nan, dtype=np.float32)
        self.win = np.full((T, C, S), -1, dtype=np.int64)
        self.peak = np.zeros((T, C, S), dtype=np.int64)
        self.ids = np.zeros((T, C, S, width), dtype=np.int32)
        self.acts = np.zeros((T, C, S, width), dtype=np.float32)

    def update(self, wmax, peak, per, ids, win) -> None:
        C = self.C
        T, B = wmax.shape
        need = np.where(np.isfinite(wmax), wmax, 0.0).max(1)
        new = np.isnan(self.cell_w) & (need > 0)
        self.cell_w[new] = pow2_width(need[new], C)
        d = fit_width(np.where(np.isnan(self.cell_w), 1.0, self.cell_w), need, C)
        d[np.isnan(self.cell_w)] = 0
        for t in np.nonzero(d)[0]:
            self.coarsen(t, int(d[t]))
        rows = np.arange(T)
        for b in range(B):
            ok = (wmax[:, b] > 0) & np.isfinite(wmax[:, b]) & ~np.isnan(self.cell_w)
            if not ok.any():
                continue
            t_i = rows[ok]
            c_i = np.minimum((wmax[ok, b] / self.cell_w[ok]).astype(np.int64), C - 1)
            self.seen[t_i, c_i] += 1
            p = uniform(self.keys[ok], int(win[b]))
            j = self.prio[t_i, c_i].argmax(1)                 # the slot to give up, if any
            hit = p < self.prio[t_i, c_i, j]
            t_i, c_i, j = t_i[hit], c_i[hit], j[hit]
            self.prio[t_i, c_i, j] = p[hit]
            self.v[t_i, c_i, j] = wmax[t_i, b]
            self.win[t_i, c_i, j] = win[b]
            self.peak[t_i, c_i, j] = peak[t_i, b]
            self.ids[t_i, c_i, j] = ids[b]
            self.acts[t_i, c_i, j] = per[t_i, b]

    def _keep_least(self, t: int, parts: list) -> None:
        """Target t's cells from ``parts`` (dicts of (C, k, ...) arrays): per cell, the
        ``slots`` entries of least priority."""
        cat = {n: np.concatenate([p[n] for p in parts], 1) for n in self._ARRAYS}
        order = np.argsort(cat["prio"], axis=1, kind="stable")[:, :self.S]
        for n in self._ARRAYS:
            a = cat[n]
            getattr(self, n)[t] = np.take_along_axis(
                a, order.reshape(order.shape + (1,) * (a.ndim - 2)), 1)

    def coarsen(self, t: int, times: int) -> None:
        """Double target t's cell width ``times`` times, merging cells pairwise."""
        C = self.C
        half, pad = (C + 1) // 2, C % 2
        for _ in range(min(times, int(math.log2(C)) + 1)):
            pairs = {}
            for n, fill in zip(self._ARRAYS, self._FILLS):
                a = getattr(self, n)[t]
                if pad:
                    a = np.concatenate([a, np.full((1,) + a.shape[1:], fill, a.dtype)])
                a = a.reshape((half, 2) + a.shape[1:])
                out = np.full((C, 2) + a.shape[2:], fill, a.dtype)
                out[:half] = a
                pairs[n] = out
            self._keep_least(t, [{n: pairs[n][:, 0] for n in pairs},
                                 {n: pairs[n][:, 1] for n in pairs}])
            seen = np.concatenate([self.seen[t], [0] * pad])
            self.seen[t] = 0
            self.seen[t, :half] = seen.reshape(half, 2).sum(1)
        self.cell_w[t] *= 2.0 ** times

    def merge(self, o: "BandReservoir") -> None:
        """Add another pass's state (disjoint windows): widths aligned, cells united."""
        for t in range(len(self.keys)):
            if np.isnan(o.cell_w[t]):
                continue
            if np.isnan(self.cell_w[t]):
                for n in self._ARRAYS + ("seen", "cell_w"):
                    getattr(self, n)[t] = getattr(o, n)[t]
                continue
            for a, b in ((self, o), (o, self)):
                if a.cell_w[t] < b.cell_w[t]:
                    a.coarsen(t, int(round(np.log2(b.cell_w[t] / a.cell_w[t]))))
            self._keep_least(t, [{n: getattr(self, n)[t] for n in self._ARRAYS},
                                 {n: getattr(o, n)[t] for n in self._ARRAYS}])
            self.seen[t] += o.seen[t]

    def bands(self, vmax: np.ndarray, top_win: np.ndarray, n_bands: int,
              per_band: int) -> list[list[Band]]:
        """Interval bands of every target: per band, the windows whose max lies in (lo, hi]
        of the corpus max ``vmax`` (counted from the cells inside the band, exact to one
        cell) and up to ``per_band`` samples drawn from the reservoirs, weighted by how many
        windows each kept sample stands for, the top-k windows ``top_win`` excluded.  The
        draws are a pure function of (seed, target name, window, band)."""
        ok_t = np.isfinite(vmax) & (vmax > 0) & ~np.isnan(self.cell_w)
        counts = self._band_counts(vmax, ok_t, n_bands)
        v, ok, band, w = self._eligible(vmax, ok_t, top_win, n_bands)
        picks = self._picks(v, ok, band, w, n_bands, per_band) if per_band and ok.any() else None
        T, CS = v.shape
        ids, acts = self.ids.reshape(T, CS, -1), self.acts.reshape(T, CS, -1)
        peak, win_l = self.peak.reshape(T, CS).tolist(), self.win.reshape(T, CS).tolist()
        v_l, counts_l = v.tolist(), counts.tolist()
        out = []
        for t in range(T):
            if not ok_t[t]:
                out.append([])
                continue
            bands = []
            for bi in range(n_bands):
                b = Band(bi / n_bands, (bi + 1) / n_bands, counts_l[t][bi], [])
                if picks is not None:
                    order, good = picks[bi]
                    b.samples = [Exemplar(v_l[t][j], peak[t][j], win_l[t][j], ids[t, j],
                                          acts[t, j]) for j, g in zip(order[t], good[t]) if g]
                bands.append(b)
            out.append(bands)
        return out

    def _band_counts(self, vmax, ok_t, nb: int) -> np.ndarray:
        """(T, bands) window counts: a cell's windows go to the band holding its midpoint."""
        T, C = self.seen.shape
        safe_mx = np.where(ok_t, vmax, 1.0)[:, None]
        cw = np.where(ok_t, self.cell_w, 0.0)[:, None]
        mid = np.minimum((np.arange(C) + 0.5)[None] * cw, safe_mx)
        cell_band = np.clip(np.ceil(mid / safe_mx * nb).astype(np.int64) - 1, 0, nb - 1)
        counts = np.zeros((T, nb), dtype=np.int64)
        np.add.at(counts, (np.repeat(np.arange(T), C), cell_band.ravel()), self.seen.ravel())
        return counts

    def _eligible(self, vmax, ok_t, top_win, nb: int):
        """Per kept sample: its value, whether it may be drawn, its band and its weight (how
        many windows it stands for)."""
        T, C, S = self.v.shape
        safe_mx = np.where(ok_t, vmax, 1.0)[:, None]
        v = self.v.reshape(T, C * S).astype(np.float64)
        win = self.win.reshape(T, C * S)
        held = win >= 0
        n_held = held.reshape(T, C, S).sum(2)
        w = np.where(held, np.repeat(self.seen / np.maximum(n_held, 1), S, axis=1), 0.0)
        in_top = (win[:, :, None] == top_win[:, None, :]).any(-1)
        with np.errstate(invalid="ignore"):
            band = np.clip(np.ceil(v / safe_mx * nb).astype(np.float64) - 1, 0, nb - 1)
            ok = held & ~in_top & (v > 0) & ok_t[:, None] & (w > 0)
        return v, ok, np.where(ok, band, 0).astype(np.int64), w

    def _picks(self, v, ok, band, w, nb: int, per_band: int):
        """Per band, (slot order, drawn?) lists: weighted draws without replacement, then
        ranked by value, best first."""
        win = self.win.reshape(v.shape)                  # draws keyed by window, not slot
        u = uniform(self.keys[:, None], win * 64 + band)
        key = np.where(ok, np.log(u) / np.where(ok, w, 1.0), -np.inf)
        n = min(per_band, v.shape[1])
        picks = []
        for bi in range(nb):
            kb = np.where(band == bi, key, -np.inf)
            order = np.argsort(-kb, axis=1, kind="stable")[:, :n]           # (T, n)
            good = np.take_along_axis(kb, order, 1) > -np.inf
            vals = np.where(good, np.take_along_axis(v, order, 1), -np.inf)
            rank = np.argsort(-vals, axis=1, kind="stable")                 # best first
            picks.append((np.take_along_axis(order, rank, 1).tolist(),
                          np.take_along_axis(good, rank, 1).tolist()))
        return picks


class Controls:
    """Random control windows shared by every target: the ``n`` windows of least priority
    (a pure function of the seed and the window index), so any order or split of the
    windows gives the same controls."""

    def __init__(self, n_targets: int, n: int, width: int, seed: int):
        self.n = n
        self.key = target_keys(["__controls__"], seed)
        self.prio = np.full(n, np.inf)
        self.win = np.full(n, -1, dtype=np.int64)
        self.ids = np.zeros((n, width), dtype=np.int32)
        self.acts = np.zeros((n_targets, n, width), dtype=np.float32)

    def update(self, per, ids, win) -> None:
        if not self.n:
            return
        p = uniform(self.key, np.asarray(win, dtype=np.int64))
        for b in range(len(win)):
            j = int(self.prio.argmax())
            if p[b] < self.prio[j]:
                self.prio[j], self.win[j] = p[b], win[b]
                self.ids[j] = ids[b]
                self.acts[:, j] = per[:, b]

    def merge(self, o: "Controls") -> None:
        prio = np.concatenate([self.prio, o.prio])
        keep = np.argsort(prio, kind="stable")[:self.n]
        self.prio, self.win = prio[keep], np.concatenate([self.win, o.win])[keep]
        self.ids = np.concatenate([self.ids, o.ids])[keep]
        self.acts = np.concatenate([self.acts, o.acts], 1)[:, keep]

    def exemplars(self, first: int) -> list[list[Exemplar]]:
        """Per target, the control windows in corpus order (max and peak from ``first``)."""
        valid = np.nonzero(self.win >= 0)[0][np.argsort(self.win[self.win >= 0])]
        T = self.acts.shape[0]
        if not len(valid):
            return [[] for _ in range(T)]
        ids, acts = self.ids.tolist(), self.acts[:, valid].tolist()
        c_max = self.acts[:, valid, first:].max(axis=2)
        c_peak = self.acts[:, valid, first:].argmax(axis=2) + first
        return [[Exemplar(float(c_max[t, i]), int(c_peak[t, i]), int(self.win[j]), ids[j],
                          acts[t][i]) for i, j in enumerate(valid)] for t in range(T)]


class PositionMaxima:
    """Running maxima over windows of each position's value and of the mean over the
    first m tokens after BOS (non-finite values never count)."""

    def __init__(self, n_targets: int, width: int):
        self.pos_max = np.full((n_targets, width), -np.inf)
        self.pmean_max = np.full((n_targets, width), -np.inf)

    def update(self, per_t: torch.Tensor) -> None:
        v = torch.where(torch.isfinite(per_t), per_t, -torch.inf)
        self.pos_max = np.fmax(self.pos_max, v.amax(dim=1).double().numpy())
        body = per_t[:, :, 1:].double()
        m = torch.arange(1, body.shape[2] + 1, dtype=torch.float64)
        means = body.cumsum(dim=2) / m
        means = torch.where(torch.isfinite(means), means, -torch.inf)
        self.pmean_max[:, 1:] = np.fmax(self.pmean_max[:, 1:], means.amax(dim=1).numpy())

    def merge(self, o: "PositionMaxima") -> None:
        self.pos_max = np.fmax(self.pos_max, o.pos_max)
        self.pmean_max = np.fmax(self.pmean_max, o.pmean_max)

    def fill(self, r, t: int) -> None:
        r.position_max = [float(x) for x in self.pos_max[t]]
        r.prefix_mean_max = [float("nan")] + [float(x) for x in self.pmean_max[t, 1:]]

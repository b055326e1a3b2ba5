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

Memory is O(targets x (k + cells x slots + controls) x window), whatever the corpus length;
token ids are kept once per window a slot holds (``WindowIds``), not once per slot.

The full-size work on a batch runs in torch on the batch as it lies in memory (targets on
the last axis, one axis reduced at a time: ``per_target``); when most values are exactly 0
(SAE features) the histogram bins only the nonzero ones.  Window-level bookkeeping runs
in numpy, vectorised over targets and over the windows of the batch.

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


def per_target(x: torch.Tensor, op: str, **kw) -> torch.Tensor:
    """Reduce ``x`` (..., T) over every axis but the last with the tensor method ``op``
    ("sum", "amin", ...), one axis at a time: torch reduces one axis of a strided batch
    many times faster than several at once.  Boolean counts: pass dtype=torch.int32."""
    for d in range(x.ndim - 2, -1, -1):
        x = getattr(x, op)(dim=d, **kw)
    return x


class WindowIds:
    """The token ids of the windows an accumulator's slots hold, kept once per window
    (however many targets and slots hold it) and pruned to the live ones now and then."""

    def __init__(self):
        self.rows: dict = {}
        self._live = 0

    def add(self, win, ids, used) -> None:
        """Keep the ids of batch rows ``used`` (windows ``win``, ids (B, W))."""
        for b in np.unique(used).tolist():
            self.rows[int(win[b])] = ids[b].copy()

    def prune(self, held: np.ndarray) -> None:
        """Forget the windows no slot holds (``held``: the slots' window indices, -1 for
        empty), once the store has doubled since the last prune."""
        if len(self.rows) > 2 * self._live + 64:
            live = set(np.unique(held[held >= 0]).tolist())
            self.rows = {w: r for w, r in self.rows.items() if w in live}
            self._live = len(self.rows)

    def merge(self, o: "WindowIds") -> None:
        self.rows.update(o.rows)

    def __getitem__(self, w: int) -> np.ndarray:
        return self.rows[w]


class RowPool:
    """Per-token value rows (each a window's values for one target) that an accumulator's
    slots point at (-1: empty), allocated as slots fill, so a sparse grid of slots costs
    the rows it holds, not its size.  Rows are written in allocation order, so a fresh
    pool's memory is touched page by page, not one page per row (first touches of fresh
    pages dominate a first batch otherwise)."""

    def __init__(self, width: int, capacity: int = 0):
        self.rows = np.zeros((capacity, width), dtype=np.float32)   # (pages untouched: free)
        self.n = 0
        self.zero_from = 0             # rows from here on have never been written: all 0

    def alloc(self, n: int, live: np.ndarray) -> np.ndarray:
        """Indices of ``n`` new rows; ``live``: the slots' row indices (-1 empty), which are
        renumbered in place when the pool is compacted to make room."""
        if self.n + n > len(self.rows):
            used = live[live >= 0]
            if 2 * len(used) < self.n:                    # most rows orphaned: compact
                keep = np.unique(used)
                self.rows[:len(keep)] = self.rows[keep]
                live[live >= 0] = np.searchsorted(keep, live[live >= 0])
                self.n = len(keep)
            if self.n + n > len(self.rows):               # (zeroed pages cost nothing untouched)
                grown = np.zeros((max(2 * len(self.rows), self.n + n, 64), self.rows.shape[1]),
                                 dtype=np.float32)
                grown[:self.n] = self.rows[:self.n]
                self.rows, self.zero_from = grown, self.n
        self.n += n
        return np.arange(self.n - n, self.n)

    def written(self, at: np.ndarray) -> np.ndarray:
        """Which of rows ``at`` may hold values (the rest are still zero), before they are
        written; marks them written."""
        dirty = at < self.zero_from
        if len(at):
            self.zero_from = max(self.zero_from, int(at.max()) + 1)
        return dirty

    def add(self, o: "RowPool", o_live: np.ndarray, live: np.ndarray) -> np.ndarray:
        """Append ``o``'s rows (``live``: this pool's slots, as in ``alloc``); returns ``o``'s
        slots ``o_live`` renumbered to them."""
        self.alloc(o.n, live)
        self.rows[self.n - o.n:self.n] = o.rows[:o.n]
        self.zero_from = max(self.zero_from, self.n)
        return np.where(o_live >= 0, o_live + (self.n - o.n), -1)


def swaps(keep: np.ndarray, n_old: int) -> tuple:
    """Where newcomers enter a row of slots.  ``keep`` (R, n_old + n_new): which of a
    row's old slots and newcomers stay.  Returns (row, old slot, newcomer) index arrays:
    each kept newcomer overwrites one given-up slot, so only entering windows are copied."""
    out, came = ~keep[:, :n_old], keep[:, n_old:]
    if (out.sum(1) == came.sum(1)).all():       # as many given up as came in (the usual)
        rows, slot = np.nonzero(out)            # row by row, both in index order
        return rows, slot, np.nonzero(came)[1]
    evicted = np.argsort(keep[:, :n_old], axis=1, kind="stable")    # given-up slots first
    entering = np.argsort(~keep[:, n_old:], axis=1, kind="stable")  # kept newcomers first
    J = min(n_old, keep.shape[1] - n_old)
    go = np.arange(J) < keep[:, n_old:].sum(1)[:, None]               # newcomer j enters
    rows = np.broadcast_to(np.arange(len(keep))[:, None], go.shape)[go]
    return rows, evicted[:, :J][go], entering[:, :J][go]


class EntryRows:
    """A batch (T, B, W) known by its nonzero entries, zeros elsewhere (the miner's SAE
    batches), for ``put_rows``: kept rows are zeroed in place and their entries written
    in, one pass over the entries, instead of gathered from the dense batch (each row a
    strided walk over the batch's memory, a cache miss per value).  ``key``: target * B +
    window of each entry, ``w`` its position, ``v`` its value (CPU tensors)."""

    def __init__(self, key: torch.Tensor, w: torch.Tensor, v: torch.Tensor, T: int, B: int,
                 W: int):
        self.key, self.w, self.v, self.B, self.W = key, w, v, B, W
        self.slot = torch.full((T * B,), -1, dtype=torch.int64)    # reset after each put

    def put(self, dest: np.ndarray, at: np.ndarray, t: np.ndarray, b: np.ndarray,
            dirty: np.ndarray | None = None) -> None:
        """dest[at[i]] = row (t[i], b[i]); the pairs distinct (as the accumulators ask);
        ``dirty``: which rows ``at`` may hold values (None: all; the others are zero)."""
        want = torch.from_numpy(np.asarray(t) * self.B + np.asarray(b))
        at = torch.from_numpy(np.asarray(at, dtype=np.int64))
        self.slot[want] = at
        s = self.slot[self.key]
        hit = torch.nonzero(s >= 0).squeeze(1)
        d = torch.from_numpy(dest)
        if dirty is not None:
            at = at[torch.from_numpy(dirty)]
        d.index_fill_(0, at, 0.0)                       # (numpy's dest[at] = 0: 10x slower)
        d.view(-1)[s[hit] * self.W + self.w[hit]] = self.v[hit]
        self.slot[want] = -1


def by_cell_then_priority(g: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``np.lexsort((p, g))`` for cells ``g`` (int64, >= 0) and priorities ``p`` (float64
    in [0, 1)): one sort of one uint64 key, the cell high and the priority's top bits low
    (a positive float's bits order as it does), ten times lexsort's speed; lexsort itself
    where two keys tie (a tie in p, or in its kept bits) or a cell is beyond 2**19."""
    if len(g) and p.dtype == np.float64 and 0 <= g.min() and g.max() < 2 ** 19 and \
            (p > 0).all() and (p < 1).all():
        key = (g.astype(np.uint64) << np.uint64(45)) | (p.view(np.uint64) >> np.uint64(17))
        order = np.argsort(key)
        ranked = key[order]
        if not (ranked[1:] == ranked[:-1]).any():
            return order
    return np.lexsort((p, g))


_WIN_CAP = 2 ** 31 - 1


def best_first_keys(v: np.ndarray, win: np.ndarray) -> np.ndarray | None:
    """int64 keys ordering windows as the miner ranks them, larger first: by value (float32
    values, held as float64), then the earlier window (an empty slot, window -1, after every
    window of its value); the value's order-preserving bits high, the window low.  None
    when a value is not a float32 or a window index is beyond 2**31 - 2."""
    f = v.astype(np.float32)
    if not np.array_equal(f, v) or (len(win) and win.max() >= _WIN_CAP):
        return None
    bits = (f + np.float32(0)).view(np.int32).astype(np.int64)        # (-0 counts as 0)
    bits = np.where(bits < 0, bits ^ 0x7FFFFFFF, bits)                 # ascending as floats
    return (bits << 32) | (_WIN_CAP - np.where(win < 0, _WIN_CAP, win))


def _best_first(v: np.ndarray, win: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k best candidates (value, then the earlier window)."""
    key = best_first_keys(v, win)
    if key is not None:                                # one number per candidate: partition
        return np.argpartition(key, key.shape[1] - k, axis=1)[:, key.shape[1] - k:]
    return np.lexsort((np.where(win < 0, np.iinfo(np.int64).max, win), -v), axis=-1)[:, :k]


def put_rows(dest: np.ndarray, at: np.ndarray, per, t: np.ndarray, b: np.ndarray,
             dirty: np.ndarray | None = None) -> None:
    """dest[at] = per[t, b]: rows (each a window's values) of a batch ``per`` (T, B, W), a
    numpy array, a torch tensor of any strides (torch gathers the miner's strided rows
    several times faster) or ``EntryRows``, into rows ``at`` of ``dest`` (N, W), a
    contiguous float32 array; ``dirty``: which rows ``at`` may hold values now (None: any;
    ``EntryRows`` writes only its entries into the others, which are zero)."""
    if isinstance(per, EntryRows):
        per.put(dest, at, t, b, dirty)
    elif isinstance(per, torch.Tensor):
        dest[at] = per[torch.from_numpy(np.asarray(t)), torch.from_numpy(np.asarray(b))].numpy()
    else:
        dest[at] = per[t, b]


def sum_per_target(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` (..., T) over every axis but the last, added in the same order for
    every target whatever T is (torch's reductions pick their order by shape, so a target's
    sums would change with the targets mined beside it): one slice at a time, each add
    elementwise."""
    while x.ndim > 1:
        acc = x[0].clone()
        for i in range(1, x.shape[0]):
            acc += x[i]
        x = acc
    return x


def sparse_sums(pos: torch.Tensor, t: torch.Tensor, v: torch.Tensor, n_pos: int,
                T: int) -> np.ndarray:
    """(2, T) float64: ``sum_per_target`` of a batch (B, n_pos, T) and of its squares, from
    its nonzero values ``v`` at positions ``pos`` of targets ``t``, given in (window,
    position) order.  The same float32 additions in the same order as the dense sums
    (first over windows at each position, each in window order, then over positions), so
    the same bits: a zero added changes no float sum."""
    flat = (pos * T + t).numpy()
    out = []
    for vals in (v, v * v):
        acc = np.zeros(n_pos * T, dtype=np.float32)
        np.add.at(acc, flat, vals.numpy())           # unbuffered: in the order given
        out.append(sum_per_target(torch.from_numpy(acc).view(n_pos, T)).double().numpy())
    return np.stack(out)


# ---------------------------------------------------------------- accumulators
class TopK:
    """Each target's k best windows in k unordered slots: a newcomer overwrites an evicted
    slot, so only entering windows are copied; ``ranked`` sorts them once at the end."""

    def __init__(self, n_targets: int, k: int, width: int):
        self.k = k
        self.v = np.full((n_targets, k), -np.inf)
        self.win = np.full((n_targets, k), -1, dtype=np.int64)
        self.peak = np.zeros((n_targets, k), dtype=np.int64)
        self.ids = WindowIds()
        self.acts = np.zeros((n_targets, k, width), dtype=np.float32)
        self.low = np.zeros(n_targets, dtype=np.int64)   # each target's weakest slot

    def update(self, wmax, peak, per, ids, win) -> None:
        k, B = self.k, wmax.shape[1]
        rows = np.nonzero((wmax > self.v[np.arange(len(self.v)), self.low][:, None]).any(1))[0]
        if not len(rows):
            return
        cand = np.concatenate([self.v[rows], wmax[rows]], axis=1)               # (R, k+B)
        cwin = np.concatenate([self.win[rows], np.broadcast_to(win, (len(rows), B))], 1)
        keep = np.zeros(cand.shape, dtype=bool)        # best k; ties go to the earlier window
        n = cand.shape[1]
        part = np.argpartition(cand, n - k, axis=1)    # by value: the k largest last
        kth = np.take_along_axis(cand, part[:, n - k:n - k + 1], 1)[:, 0]
        tied = np.take_along_axis(cand, part[:, :n - k], 1).max(1) == kth
        best = part[:, n - k:]
        if tied.any():                                 # a tie at the k-th value: windows decide
            best[tied] = _best_first(cand[tied], cwin[tied], k)
        np.put_along_axis(keep, best, True, axis=1)
        i, slot, b = swaps(keep, k)
        r = rows[i]
        dirty = self.win[r, slot] >= 0                 # (a slot never filled: a zero row)
        self.v[r, slot] = wmax[r, b]
        self.win[r, slot] = win[b]
        self.peak[r, slot] = peak[r, b]
        put_rows(self.acts.reshape(-1, self.acts.shape[2]), r * k + slot, per, r, b, dirty)
        self.low[rows] = self.v[rows].argmin(1)
        self.ids.add(win, ids, b)
        self.ids.prune(self.win)

    def merge(self, o: "TopK") -> None:
        """Keep the best k of both (ties: the earlier window)."""
        k = self.k
        v = np.concatenate([self.v, o.v], 1)
        win = np.concatenate([self.win, o.win], 1)
        order = np.lexsort((np.where(win < 0, np.iinfo(np.int64).max, win), -v), axis=-1)[:, :k]
        take = lambda a, b: np.take_along_axis(np.concatenate([a, b], 1),  # noqa: E731
                                               order.reshape(order.shape + (1,) * (a.ndim - 2)), 1)
        self.v, self.win = take(self.v, o.v), take(self.win, o.win)
        self.peak, self.acts = take(self.peak, o.peak), take(self.acts, o.acts)
        self.low = self.v.argmin(1)
        self.ids.merge(o.ids)

    def ranked(self) -> list[list[Exemplar]]:
        """Per target, its windows best first (ties: the earlier window)."""
        unused = self.win < 0
        order = np.lexsort((np.where(unused, np.iinfo(np.int64).max, self.win), -self.v),
                           axis=-1)                      # slots -> ranks
        for name in ("v", "win", "peak"):
            setattr(self, name, np.take_along_axis(getattr(self, name), order, 1))
        self.acts = np.take_along_axis(self.acts, order[:, :, None], 1)
        self.low = self.v.argmin(1)
        v, peak, win = self.v.tolist(), self.peak.tolist(), self.win.tolist()
        out = []
        for t in range(len(v)):
            rows_a = list(self.acts[t])                                      # row views
            out.append([Exemplar(a, p, w, self.ids[w], rows_a[i])
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
        self._sparse = True            # bin only the nonzeros (a speed hint, not a result)

    def update(self, values: torch.Tensor, valid: torch.Tensor | None, vmax: torch.Tensor,
               vmin: torch.Tensor | None = None, nonzero: tuple | None = None):
        """values: (T, B, P) (or (T, N)) torch values of the batch's tokens, any strides
        (reductions run with the targets as the last axis, which is how the miner's batches
        lie in memory);
        valid: their finite mask, or None when all are finite; vmax: (T,) the batch's max
        over finite values (from the window maxima); vmin: its min over finite values, when
        the caller has it; nonzero: (position, target, value) tensors of every nonzero
        value, in (window, position) order, when the caller knows them (all finite)."""
        G = self.G
        x = values.movedim(0, -1)                               # (..., T)
        ok = None if valid is None else valid.movedim(0, -1)
        if ok is not None:
            self.nonfinite += per_target(~ok, "sum", dtype=torch.int32).numpy()
            if vmin is None:
                vmin = per_target(torch.where(ok, x, torch.inf), "amin")
            x = torch.where(ok, x, 0.0)
        elif vmin is None:
            vmin = per_target(x, "amin")
        vmax, vmin = vmax.double().numpy(), vmin.double().numpy()
        self.vmax = np.fmax(self.vmax, vmax)
        self.vmin = np.fmin(self.vmin, vmin)
        absmax = np.maximum(np.abs(np.where(np.isfinite(vmax), vmax, 0.0)),
                            np.abs(np.where(np.isfinite(vmin), vmin, 0.0)))
        new = np.isnan(self.hist_w)
        self.hist_w[new] = pow2_width(absmax[new], G)
        d = fit_width(self.hist_w, absmax, G)
        grow = np.nonzero(d)[0]
        if len(grow):
            for times in np.unique(d[grow]):              # one merge per distinct doubling
                ts = grow[d[grow] == times]
                self.hist[ts, G:] = merge_pairs(self.hist[ts, G:], int(times), True)
                self.hist[ts, :G] = merge_pairs(self.hist[ts, :G], int(times), False)
            self.hist_w[grow] *= 2.0 ** d[grow]
        hist, above, sums = self._counts(x, ok, nonzero)
        self.hist += hist
        self.n_above += above
        self.sums.append(sums)                  # per batch: sums of float32 values, as float64
        self._totals = None

    def _counts(self, x: torch.Tensor, ok: torch.Tensor | None, nonzero) -> tuple:
        """(T, 2G) histogram counts, (T,) counts above the threshold and (2, T) sums and
        sums of squares (``sum_per_target``) of the batch ``x`` (B, P, T) (non-finite
        entries zeroed, ``ok`` marking the finite ones).

        Zeros all fall in bin 0 of the positive side, are above the threshold only when it
        is negative and add nothing to a float sum, so when most values are exactly 0 (SAE
        features, ReLU neurons) only the nonzero ones (``nonzero``, or found here) are
        binned and added up, in the order the dense sums take, and the zeros counted.  Both
        ways give the same figures to the bit, so which one runs (decided by the last
        batch's share of nonzeros, or by the caller knowing them) changes nothing."""
        G, T = self.G, x.shape[-1]
        if x.ndim == 2:                                  # (N, T): one position per row
            x, ok = x[:, None], None if ok is None else ok[:, None]
        inv = torch.from_numpy((1.0 / self.hist_w).astype(np.float32))
        offset = torch.arange(G, T * 2 * G, 2 * G)
        if ok is None and (self._sparse or nonzero is not None):
            if nonzero is None:
                win, pos, t = torch.nonzero(x, as_tuple=True)   # (window, position) order
                v = x[win, pos, t]
                self._sparse = 4 * len(v) < x.numel()
            else:
                pos, t, v = nonzero
            b = (v * inv[t]).floor_().clamp_(-G, G - 1).long() + offset[t]
            hist = torch.bincount(b, minlength=T * 2 * G).reshape(T, 2 * G)
            zeros = x[..., 0].numel() - torch.bincount(t, minlength=T)
            hist[:, G] += zeros
            above = torch.bincount(t[v > self.threshold], minlength=T)
            if self.threshold < 0:
                above += zeros
            return hist.numpy(), above.numpy(), sparse_sums(pos, t, v, x.shape[1], T)
        sums = np.stack([sum_per_target(x).double().numpy(),
                         sum_per_target(x * x).double().numpy()])
        above = x > self.threshold
        if ok is not None:
            above &= ok
        above = per_target(above, "sum", dtype=torch.int32).numpy()
        b = (x * inv).floor_().clamp_(-G, G - 1)               # bin, then the target's offset
        if T * 2 * G < 2 ** 24:                               # (exact in float32: one pass fewer)
            b = b.add_(offset.float()).long()
        else:
            b = b.long() + offset
        if ok is None:
            self._sparse = 4 * int(torch.count_nonzero(x)) < x.numel()
        b = b[ok] if ok is not None else b.reshape(-1)
        return torch.bincount(b, minlength=T * 2 * G).reshape(T, 2 * G).numpy(), above, sums

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

    _ARRAYS = ("prio", "v", "win", "peak", "row")
    _FILLS = (np.inf, np.nan, -1, 0, -1)

    def __init__(self, keys: np.ndarray, cells: int, slots: int, width: int):
        T, C, S = len(keys), cells, slots
        self.keys, self.C, self.S = keys, C, S
        self.cell_w = np.full(T, np.nan)
        self.seen = np.zeros((T, C), dtype=np.int64)
        self.prio = np.full((T, C, S), np.inf)
        self.v = np.full((T, C, S), np.nan, dtype=np.float32)
        self.win = np.full((T, C, S), -1, dtype=np.int64)
        self.peak = np.zeros((T, C, S), dtype=np.int64)
        self.ids = WindowIds()
        self.row = np.full((T, C, S), -1, dtype=np.int64)   # each slot's values: pool.rows
        self.pool = RowPool(width, min(T * C * S, 2 ** 30 // (4 * width)))  # room for every
        # slot (up to 1 GiB, untouched pages cost nothing): no growth copies

    def update(self, wmax, peak, per, ids, win) -> None:
        C = self.C
        T, B = wmax.shape
        need = np.maximum(torch.from_numpy(wmax).amax(1).numpy(), 0.0)   # (numpy's: 10x slower;
        # no NaN or +inf in wmax; -inf: no finite value)
        new = np.isnan(self.cell_w) & (need > 0)
        self.cell_w[new] = pow2_width(need[new], C)
        d = fit_width(np.where(np.isnan(self.cell_w), 1.0, self.cell_w), need, C)
        d[np.isnan(self.cell_w)] = 0
        for times in np.unique(d[d > 0]):              # targets whose max outgrew the grid
            self.coarsen(np.nonzero(d == times)[0], int(times))
        ok = (wmax > 0) & np.isfinite(wmax) & ~np.isnan(self.cell_w)[:, None]
        t_i, b_i = np.nonzero(ok)
        if not len(t_i):
            return
        c_i = np.minimum((wmax[t_i, b_i] / self.cell_w[t_i]).astype(np.int64), C - 1)
        self.seen += np.bincount(t_i * C + c_i, minlength=T * C).reshape(T, C)
        p = uniform(self.keys[t_i], win[b_i])
        worst = self.prio[:, :, 0].copy()                 # each cell's worst kept priority
        for j in range(1, self.S):                         # (slot by slot: numpy's max over a
            np.maximum(worst, self.prio[:, :, j], out=worst)   # short last axis is slow)
        hit = p < worst.reshape(-1)[t_i * C + c_i]        # beats the cell's worst kept window
        if hit.any():
            self._enter(t_i[hit], c_i[hit], p[hit], wmax[t_i[hit], b_i[hit]], b_i[hit],
                        peak, per, ids, win)

    def _enter(self, t_i, c_i, p, v, b_i, peak, per, ids, win) -> None:
        """Let newcomers (target, cell, priority, value, batch row) into their cells: per
        cell, the ``slots`` of least priority among the kept windows and the newcomers stay
        (the same as offering the newcomers one by one)."""
        C, S = self.C, self.S
        g = t_i * C + c_i
        order = by_cell_then_priority(g, p)
        g, t_i, c_i, p, v, b_i = g[order], t_i[order], c_i[order], p[order], v[order], b_i[order]
        first = np.r_[True, g[1:] != g[:-1]]
        group = np.cumsum(first) - 1
        rank = np.arange(len(g)) - np.nonzero(first)[0][group]
        few = rank < S                                  # at most S newcomers per cell matter
        gt, gc = t_i[first], c_i[first]
        new_p = np.full((len(gt), S), np.inf)
        src = np.zeros((len(gt), S), dtype=np.int64)
        new_p[group[few], rank[few]] = p[few]
        src[group[few], rank[few]] = np.nonzero(few)[0]
        both = np.concatenate([self.prio[gt, gc], new_p], 1)       # (cells, 2S)
        keep = np.zeros(both.shape, dtype=bool)         # ties: the kept window stays
        np.put_along_axis(keep, np.argsort(both, axis=1, kind="stable")[:, :S], True, axis=1)
        keep[:, S:] &= np.isfinite(new_p)
        i, slot, j = swaps(keep, S)
        tt, cc, k = gt[i], gc[i], src[i, j]
        self.prio[tt, cc, slot] = p[k]
        self.v[tt, cc, slot] = v[k]
        self.win[tt, cc, slot] = win[b_i[k]]
        self.peak[tt, cc, slot] = peak[t_i[k], b_i[k]]
        fresh = np.nonzero(self.row[tt, cc, slot] < 0)[0]   # an evicted slot's row is reused
        new = self.pool.alloc(len(fresh), self.row)     # (which may renumber self.row)
        r = self.row[tt, cc, slot]
        r[fresh] = new
        self.row[tt, cc, slot] = r
        put_rows(self.pool.rows, r, per, t_i[k], b_i[k], self.pool.written(r))
        self.ids.add(win, ids, b_i[k])
        self.ids.prune(self.win)

    def _keep_least(self, ts: np.ndarray, parts: list) -> None:
        """Targets ``ts``' cells from ``parts`` (dicts of (len(ts), C, k, ...) arrays): per
        cell, the ``slots`` entries of least priority."""
        cat = {n: np.concatenate([p[n] for p in parts], 2) for n in self._ARRAYS}
        order = np.argsort(cat["prio"], axis=2, kind="stable")[:, :, :self.S]
        for n in self._ARRAYS:
            a = cat[n]
            getattr(self, n)[ts] = np.take_along_axis(
                a, order.reshape(order.shape + (1,) * (a.ndim - 3)), 2)

    def coarsen(self, ts: np.ndarray, times: int) -> None:
        """Double the cell width of targets ``ts`` ``times`` times, merging cells pairwise."""
        C, n = self.C, len(ts)
        half, pad = (C + 1) // 2, C % 2
        for _ in range(min(times, int(math.log2(C)) + 1)):
            pairs = {}
            for name, fill in zip(self._ARRAYS, self._FILLS):
                a = getattr(self, name)[ts]                                # (n, C, S, ...)
                if pad:
                    a = np.concatenate([a, np.full((n, 1) + a.shape[2:], fill, a.dtype)], 1)
                a = a.reshape((n, half, 2) + a.shape[2:])
                out = np.full((n, C, 2) + a.shape[3:], fill, a.dtype)
                out[:, :half] = a
                pairs[name] = out
            self._keep_least(ts, [{k: v[:, :, 0] for k, v in pairs.items()},
                                  {k: v[:, :, 1] for k, v in pairs.items()}])
            seen = np.concatenate([self.seen[ts], np.zeros((n, pad), np.int64)], 1)
            self.seen[ts] = 0
            self.seen[ts, :half] = seen.reshape(n, half, 2).sum(2)
        self.cell_w[ts] *= 2.0 ** times

    def merge(self, o: "BandReservoir") -> None:
        """Add another pass's state (disjoint windows): widths aligned, cells united."""
        o.row, o.pool = self.pool.add(o.pool, o.row, self.row), self.pool
        for t in range(len(self.keys)):
            if np.isnan(o.cell_w[t]):
                continue
            if np.isnan(self.cell_w[t]):
                for n in self._ARRAYS + ("seen", "cell_w"):
                    getattr(self, n)[t] = getattr(o, n)[t]
                continue
            ts = np.array([t])
            for a, b in ((self, o), (o, self)):
                if a.cell_w[t] < b.cell_w[t]:
                    a.coarsen(ts, int(round(np.log2(b.cell_w[t] / a.cell_w[t]))))
            self._keep_least(ts, [{n: getattr(self, n)[ts] for n in self._ARRAYS},
                                  {n: getattr(o, n)[ts] for n in self._ARRAYS}])
            self.seen[t] += o.seen[t]
        self.ids.merge(o.ids)

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
        row = self.row.reshape(T, CS)
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
                    b.samples = [Exemplar(v_l[t][j], peak[t][j], win_l[t][j],
                                          self.ids[win_l[t][j]], self.pool.rows[row[t, j]])
                                 for j, g in zip(order[t], good[t]) if g]
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
                self.acts[:, j] = np.asarray(per[:, b])

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
        ids, acts = self.ids.tolist(), self.acts[:, valid]                # numpy rows
        c_max = acts[:, :, first:].max(axis=2).tolist()
        c_peak = (acts[:, :, first:].argmax(axis=2) + first).tolist()
        wins = self.win[valid].tolist()
        return [[Exemplar(c_max[t][i], c_peak[t][i], w, ids[j], acts[t, i])
                 for i, (j, w) in enumerate(zip(valid, wins))] for t in range(T)]


class PositionMaxima:
    """Running maxima over windows of each position's value and of the mean over the
    first m tokens after BOS (non-finite values never count)."""

    def __init__(self, n_targets: int, width: int):
        self.pos_max = torch.full((width, n_targets), -torch.inf)       # (W, T): as batches lie
        self.pmean_max = torch.full((width, n_targets), -torch.inf)
        self._lists = None                 # per target, as lists (made once, by ``fill``)

    def update(self, per_t: torch.Tensor, clean: bool = False) -> None:
        """per_t: (T, B, W) torch values, any strides; ``clean``: all are finite."""
        x = per_t.movedim(0, -1)                                # (B, W, T)
        B, W, T = x.shape
        m = torch.arange(1, W, dtype=torch.float32)[:, None]
        if clean:      # max over windows of the prefix mean = (max of the prefix sum) / m
            torch.maximum(self.pos_max, x.amax(dim=0), out=self.pos_max)
            run, best = torch.zeros(B, T), torch.empty(W - 1, T)
            for w in range(1, W):
                run += x[:, w]
                torch.amax(run, 0, out=best[w - 1])
            means = best / m
        else:
            fin = torch.where(torch.isfinite(x), x, -torch.inf)
            torch.maximum(self.pos_max, fin.amax(dim=0), out=self.pos_max)
            means = x[:, 1:].cumsum(dim=1) / m
            means = torch.where(torch.isfinite(means), means, -torch.inf).amax(dim=0)
        torch.maximum(self.pmean_max[1:], means, out=self.pmean_max[1:])
        self._lists = None

    def update_positive(self, w: torch.Tensor, key: torch.Tensor, t: torch.Tensor,
                        v: torch.Tensor, B: int, W: int) -> None:
        """``update`` from the entries of a batch (B, W) where it may be nonzero, all
        positive and finite (the miner's ``Nonzero``, in ascending row order): position
        ``w``, ``key`` = target * B + window, target ``t``, value ``v``; the same figures.
        A window's prefix sum is its entries added up in position order (a zero added
        changes no float sum), nondecreasing, so the max over windows of the prefix sum at
        position w is the running max over positions <= w of the sums at the entries (and
        0 where no window has one yet)."""
        T = self.pos_max.shape[1]
        at_pos = w * T + t
        bmax = torch.zeros(W * T).scatter_reduce_(0, at_pos, v, "amax").view(W, T)
        torch.maximum(self.pos_max, bmax, out=self.pos_max)
        wn = w.numpy()
        order = np.argsort(wn.astype(np.uint8 if W <= 256 else np.int32), kind="stable")
        ends = np.cumsum(np.bincount(wn, minlength=W))      # by position, rows in order
        vals = v.numpy()[order]
        key = key.numpy()[order]
        run = np.zeros(T * B, dtype=np.float32)             # each window's prefix sum
        sums = np.empty_like(vals)
        for p in range(1, W):                               # a window's entries at p: one each
            sl = slice(ends[p - 1], ends[p])
            run[key[sl]] += vals[sl]
            sums[sl] = run[key[sl]]
        at = order[ends[0]:]                                # positions >= 1
        best = torch.zeros(W * T).scatter_reduce_(0, at_pos[at], torch.from_numpy(sums[ends[0]:]),
                                                  "amax").view(W, T)[1:]
        bn = best.numpy()
        for p in range(1, W - 1):                           # running max over positions
            np.maximum(bn[p - 1], bn[p], out=bn[p])
        means = best / torch.arange(1, W, dtype=torch.float32)[:, None]
        torch.maximum(self.pmean_max[1:], means, out=self.pmean_max[1:])
        self._lists = None

    def merge(self, o: "PositionMaxima") -> None:
        torch.maximum(self.pos_max, o.pos_max, out=self.pos_max)
        torch.maximum(self.pmean_max, o.pmean_max, out=self.pmean_max)
        self._lists = None

    def fill(self, r, t: int) -> None:
        if self._lists is None:
            self._lists = (self.pos_max.T.double().tolist(), self.pmean_max.T.double().tolist())
        r.position_max = self._lists[0][t]
        r.prefix_mean_max = [float("nan")] + self._lists[1][t][1:]

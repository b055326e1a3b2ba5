"""Exemplar mining: one streaming pass over a corpus for many targets at once.

Per target the miner keeps (each in its accumulator, ``mining.accumulators``) the top-k
windows by their maximum (BOS excluded by default) with per-token values; samples from
interval bands below the top, drawn from per-cell reservoirs on a grid of window maxima;
an exact histogram, the density, mean, min and max; the maxima by position; and the
values on a small shared random control group of windows.  Everything is vectorised over
targets, so thousands of neurons cost little beyond the forward pass itself.
"""
from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

import featviz.mining.corpus as corpus_mod
from featviz.errors import FeatvizError
from featviz.mining.accumulators import (
    BandReservoir,
    Controls,
    EntryRows,
    Moments,
    PositionMaxima,
    TopK,
    per_target,
)
from featviz.mining.grid import target_keys
from featviz.mining.records import TargetExemplars
from featviz.model.forward import run
from featviz.targets.core import Atom, Target, all_sites
from featviz.targets.kinds import TORCH_OPS, head_norms, topk_relu, topk_relu_entries
from featviz.targets.sae import encode, relu_entries, topk_scores


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


# ---------------------------------------------------------------- batched reading
class Nonzero(NamedTuple):
    """Where a batch's values (T, B, S) may be nonzero, when that is known without a scan
    of them: (row, target, value) entries, ``row = b * S + s``, in ascending row order."""

    rows: torch.Tensor
    targets: torch.Tensor
    values: torch.Tensor


def read_all(captures: dict, targets: list[Target], handle) -> torch.Tensor:
    """Per-position values of many targets, shape (n_targets, batch, seq) (``read_values``)."""
    return read_values(captures, targets, handle)[0]


@dataclass(frozen=True)
class ReadPlan:
    """How ``read_values`` reads a list of targets on a model, worked out once per list
    (for a whole SAE dictionary the per-target Python work costs milliseconds per batch):
    ``groups`` of (how, target positions, selected units, whether they are 0..n-1) and
    the positions read target by target; ``in_order``: whether groups then singles list
    the targets in their order (the usual case: the parts are stacked as they come);
    ``scratch``: buffers reused batch after batch (a whole SAE dictionary's encoding)."""

    groups: tuple
    single: tuple
    in_order: bool
    scratch: dict = field(default_factory=dict, compare=False)


def plan_reading(targets: list[Target], handle) -> ReadPlan:
    """Neurons and basis dimensions of one site are gathered with one index; head norms
    are computed once per layer; an SAE's features come from one encoding of the batch
    for all of them; anything else is read target by target."""
    groups: dict = {}
    single: list = []
    for i, t in enumerate(targets):
        plain = type(t) is Atom          # subclasses may read differently: ask them
        if plain and t.kind == "sae":
            groups.setdefault(("sae", t.file), []).append(i)
        elif plain and t.kind == "head":
            groups.setdefault(("norm", t.site), []).append(i)
        elif plain and t.column(handle) is not None:
            groups.setdefault(("column", t.site), []).append(i)
        else:
            single.append(i)
    out = []
    for (how, _), idx in groups.items():
        sel = [targets[i].index if how != "column" else targets[i].column(handle) for i in idx]
        out.append((how, tuple(idx), torch.as_tensor(sel), sel == list(range(len(sel)))))
    order = [i for _, idx, _, _ in out for i in idx] + single
    return ReadPlan(tuple(out), tuple(single), order == list(range(len(targets))))


def read_values(captures: dict, targets: list[Target], handle,
                plan: ReadPlan | None = None) -> tuple:
    """Per-position values of many targets (n_targets, batch, seq), and their ``Nonzero``
    entries when the targets are all the features of one SAE in order (for TopK the k
    encoded per token; otherwise one scan of the encoding), else None.  ``plan``: the
    targets' ``plan_reading``, when the caller reads them batch after batch (then a whole
    dictionary's values lie in the plan's buffer: valid until the next read with it)."""
    plan = plan or plan_reading(targets, handle)
    parts, nonzero = [], None                             # (target positions, (n, B, S) values)
    for how, idx, sel, from_zero in plan.groups:
        first = targets[idx[0]]
        x = captures[first.site]
        if how == "sae":                                   # one encoding: every feature
            spec, w = first.sae_spec, first.sae_weights(handle, x)
            whole = from_zero and len(sel) == spec.d_sae and len(idx) == len(targets)
            buf = _buffer(plan.scratch, (x[..., 0].numel(), spec.d_sae), x) if whole else None
            if whole and spec.architecture == "topk":      # the k entries per token it chose
                h = topk_scores(spec, w, x, TORCH_OPS, buf)
                entries = topk_relu_entries(h, spec.k)
                x = topk_relu(h, spec.k, entries)
                rows = torch.arange(entries[0][..., 0].numel(), device=x.device)
                rows = rows[:, None].expand(-1, spec.k).reshape(-1)
                t, v = entries[0].reshape(-1), entries[1].reshape(-1)
                keep = v != 0
                nonzero = Nonzero(rows[keep], t[keep], v[keep].float())
            elif whole and (got := relu_entries(spec, w, x, TORCH_OPS, buf)) is not None:
                x, rows, t, v = got                        # entries from the mask, no scan
                nonzero = Nonzero(rows, t, v.float())
            else:
                x = encode(spec, w, x, TORCH_OPS)
                if whole:                                  # one scan, where the miner needs it
                    rows, t = torch.nonzero(x.reshape(-1, spec.d_sae), as_tuple=True)
                    nonzero = Nonzero(rows, t, x.reshape(-1, spec.d_sae)[rows, t].float())
        elif how == "norm":
            x = head_norms(x, handle.n_heads, handle.head_dim)
        every = from_zero and len(sel) == x.shape[-1]     # all units in order: no gather
        vals = x if every else x.index_select(-1, sel.to(x.device))
        parts.append((idx, vals.permute(2, 0, 1)))
    for i in plan.single:
        parts.append(([i], targets[i].per_position(captures, handle)[None]))
    if plan.in_order:
        return (parts[0][1] if len(parts) == 1 else torch.cat([v for _, v in parts])), nonzero
    out = torch.empty((len(targets),) + parts[0][1].shape[1:], dtype=parts[0][1].dtype,
                      device=parts[0][1].device)
    for idx, v in parts:
        out[torch.as_tensor(idx, device=v.device)] = v.to(out.dtype)
    return out, nonzero


def _buffer(scratch: dict, shape: tuple, like: torch.Tensor) -> torch.Tensor:
    """A contiguous float buffer of ``shape`` (rows, n) on ``like``'s device and dtype,
    kept in ``scratch`` and reused while its rows suffice."""
    key = (shape[1], like.device, like.dtype)
    buf = scratch.get(key)
    if buf is None or buf.shape[0] < shape[0]:
        buf = scratch[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
    return buf[:shape[0]]


def read_batch(handle, targets: list[Target], sites, ids: np.ndarray,
               plan: ReadPlan | None = None) -> tuple:
    """One forward pass over a batch of windows ``ids`` (B, W): the targets' values at
    every position as a CPU float32 tensor (T, B, W), and their ``Nonzero`` entries (CPU)
    where the reading gives them, else None."""
    with torch.no_grad():
        caps, _ = run(handle, sites, input_ids=torch.as_tensor(ids, device=handle.device))
        per, nz = read_values(caps, targets, handle, plan)
        return per.float().cpu(), (None if nz is None else Nonzero(*(a.cpu() for a in nz)))


class Miner:
    """Streaming state for many targets: feed it window batches (``update``), then
    ``finish``.  Each kind of summary is an accumulator of ``mining.accumulators``; the
    miner computes what they share (window maxima and peaks) once per batch."""

    def __init__(self, targets: list[Target], cfg: MineConfig, width: int):
        self.targets, self.cfg, self.W = list(targets), cfg, width
        T = len(targets)
        self.top = TopK(T, cfg.k, width)
        self.bottom = TopK(T, cfg.k, width)      # ranked by -(window min): the most negative
        self.moments = Moments(T, cfg.hist_bins, cfg.density_threshold)
        self.reservoir = BandReservoir(target_keys(targets, cfg.seed), cfg.cells, cfg.slots,
                                       width)
        self.controls = Controls(T, cfg.controls, width, cfg.seed)
        self.positions = PositionMaxima(T, width)
        self.n_tok = self.n_win = 0

    def update(self, per, ids: np.ndarray, win: np.ndarray,
               nonzero: Nonzero | None = None) -> np.ndarray:
        """per: (T, B, W) values (a CPU torch tensor or numpy array), ids (B, W), window
        indices (B,); ``nonzero``: where per may be nonzero, when the reading knows it (then
        the reductions over the batch run on those entries alone, when all are positive:
        the same figures).  The full-size reductions run in torch (multi-threaded); the
        bookkeeping on small arrays in numpy.  Returns the window maxima (T, B) (BOS
        excluded unless ``include_bos``; -inf where a window has no finite value)."""
        per_t = torch.as_tensor(per, dtype=torch.float32)
        T, B, W = per_t.shape
        start = 0 if self.cfg.include_bos else 1
        if nonzero is not None and bool(((nonzero.values > 0) &
                                         torch.isfinite(nonzero.values)).all()):
            return self._update_positive(per_t, ids, win, nonzero, start)
        # Reductions run on the batch as it lies in memory: read_all hands over the
        # (B, W, T) hooked activations permuted to (T, B, W), so x is the contiguous tensor.
        x = per_t.movedim(0, -1)[:, start:]                                     # (B, W', T)
        mx, lo = x.max(dim=1), per_target(x, "amin")      # NaN and inf show in these (or BOS)
        clean = bool(torch.isfinite(mx.values).all() and torch.isfinite(lo).all() and
                     torch.isfinite(per_t[:, :, 0]).all())
        finite = None
        if not clean:                        # again, over the finite values only
            finite = torch.isfinite(x)
            mx = torch.where(finite, x, -torch.inf).max(dim=1)
            lo = per_target(torch.where(finite, x, torch.inf), "amin")
        wmax, peak = mx.values.T.numpy(), mx.indices.T.numpy() + start         # (T, B)
        self.top.update(wmax, peak, per_t, ids, win)
        neg = np.nonzero((lo < 0).numpy())[0]
        if len(neg):                       # the most negative windows: targets that go below 0
            sub = x[:, :, torch.as_tensor(neg)]
            mn = (sub if clean else torch.where(finite[:, :, torch.as_tensor(neg)], sub,
                                                torch.inf)).min(dim=1)
            nmin = np.full((T, B), -np.inf, dtype=np.float32)
            npeak = np.zeros((T, B), dtype=np.int64)
            nmin[neg], npeak[neg] = -mn.values.T.numpy(), mn.indices.T.numpy() + start
            self.bottom.update(nmin, npeak, per_t, ids, win)
        self.moments.update(per_t[:, :, start:], None if clean else finite.movedim(-1, 0),
                            mx.values.amax(dim=0), lo)
        self.positions.update(per_t, clean)
        return self._windows(wmax, peak, per_t, ids, win)

    def _windows(self, wmax, peak, per_t, ids, win, rows=None) -> np.ndarray:
        """The accumulators that keep windows (after top and bottom), and the counts;
        ``rows``: where kept rows are taken from, when not ``per_t`` (``EntryRows``)."""
        self.reservoir.update(wmax, peak, per_t if rows is None else rows, ids, win)
        self.controls.update(per_t, ids, win)
        self.n_tok += per_t.shape[1] * (per_t.shape[2] - (0 if self.cfg.include_bos else 1))
        self.n_win += per_t.shape[1]
        return wmax

    def _update_positive(self, per_t, ids, win, nz: Nonzero, start: int) -> np.ndarray:
        """``update`` from the entries ``nz`` where the batch may be nonzero, all positive
        (the features of an SAE: every architecture ends in a ReLU): a window's max is its
        largest entry or 0, its peak the first position holding it (the first position
        when it is 0), as the dense reductions find them; no full-size pass."""
        T, B, W = per_t.shape
        if W & (W - 1):
            b, w = nz.rows // W, nz.rows % W
        else:                                                # (shifts: 3x integer division)
            b, w = nz.rows >> (W.bit_length() - 1), nz.rows & (W - 1)
        key_all = nz.targets * B + b
        t, v, wa, key = nz.targets, nz.values, w, key_all
        if start:                                            # BOS excluded unless asked
            a = torch.nonzero(w >= start).squeeze(1)
            t, v, wa, key = (x.index_select(0, a) for x in (t, v, wa, key))
        mx = torch.zeros(T * B).scatter_reduce_(0, key, v, "amax")
        at_max = torch.nonzero(v == mx[key]).squeeze(1)
        first = torch.full((T * B,), W).scatter_reduce_(0, key.index_select(0, at_max),
                                                        wa.index_select(0, at_max), "amin")
        wmax = mx.view(T, B).numpy()
        peak = torch.where(first < W, first, start).view(T, B).numpy()
        count = torch.bincount(t, minlength=T)
        lo = torch.full((T,), torch.inf).scatter_reduce_(0, t, v, "amin")
        lo = torch.where(count < B * (W - start), 0.0, lo)  # a zero among the values
        rows = EntryRows(key_all, w, nz.values, T, B, W)    # kept rows built from the entries
        self.top.update(wmax, peak, rows, ids, win)
        self.moments.update(per_t[:, :, start:], None, mx.view(T, B).amax(dim=1), lo,
                            (wa - start, t, v))
        self.positions.update_positive(w, key_all, nz.targets, nz.values, B, W)
        return self._windows(wmax, peak, per_t, ids, win, rows)

    def merge(self, other: "Miner") -> "Miner":
        """Add the state of a pass over other batches of the same corpus (``mine_part``):
        the result equals one pass over both.  ``other`` may be changed (its grids are
        coarsened to match); pass a copy to keep it."""
        if [str(t) for t in other.targets] != [str(t) for t in self.targets] or \
                other.cfg.key() != self.cfg.key():
            raise FeatvizError("only passes over the same targets with the same mining "
                               "settings can be merged")
        for name in ("top", "bottom", "moments", "reservoir", "controls", "positions"):
            getattr(self, name).merge(getattr(other, name))
        self.n_tok += other.n_tok
        self.n_win += other.n_win
        return self

    def finish(self) -> list[TargetExemplars]:
        with gc_paused():   # ~100 acyclic records per target: the cyclic collector would
            return self._finish()   # rescan them again and again (3x the time, 4608 features)

    def _finish(self) -> list[TargetExemplars]:
        cfg = self.cfg
        top, bottom = self.top.ranked(), self.bottom.ranked()
        bands = self.reservoir.bands(self.moments.vmax, self.top.win, cfg.bands, cfg.per_band)
        controls = self.controls.exemplars(0 if cfg.include_bos else 1)
        out = []
        for t, target in enumerate(self.targets):
            r = TargetExemplars(str(target), density_threshold=cfg.density_threshold)
            r.n_windows, r.n_tokens = self.n_win, self.n_tok
            r.top, r.bands, r.controls = top[t], bands[t], controls[t]
            r.bottom = [replace(e, value=-e.value) for e in bottom[t] if e.value > 0]
            self.moments.fill(r, t, self.n_tok)
            self.positions.fill(r, t)
            out.append(r)
        return out


@contextlib.contextmanager
def gc_paused():
    """Python's cyclic garbage collector off inside the block (as it was after it)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def mine(handle, targets: list[Target], config: MineConfig | None = None, *,
         source: str | None = None, progress: bool = True) -> list[TargetExemplars]:
    """Read every target on every corpus window in one streaming pass.  ``source``: the
    corpus (a file, folder or ``hf:`` name; None: the embedded Wikipedia summaries)."""
    cfg = (config or MineConfig()).check()
    if not targets:
        return []
    return mine_part(handle, targets, cfg, source=source, progress=progress).finish()


def mine_part(handle, targets: list[Target], config: MineConfig | None = None, *,
              source: str | None = None, part: tuple[int, int] | None = None,
              progress: bool = True) -> Miner:
    """The miner's state after a pass over corpus part ``part = (i, N)``: the window
    batches whose number is i - 1 modulo N (all when None; batches of ``batch_size``
    consecutive windows, as one pass makes them).  ``Miner.merge`` adds the parts up;
    ``finish`` turns the sum into exactly the records one pass over all windows gives."""
    cfg = (config or MineConfig()).check()
    i, n = part or (1, 1)
    if not (isinstance(i, int) and isinstance(n, int) and 1 <= i <= n):
        raise FeatvizError(f"corpus part {i}/{n}: i must be between 1 and N")
    sites, plan = all_sites(targets), plan_reading(targets, handle)
    miner = Miner(targets, cfg, cfg.window + 1)
    bar = tqdm(total=(cfg.max_tokens // cfg.window) * cfg.window, unit="tok", desc="mining",
               disable=not progress, leave=False)
    stream = corpus_mod.windows(handle, source, cfg.window, max_tokens=cfg.max_tokens)
    for b, batch in enumerate(corpus_mod.batched(stream, cfg.batch_size)):
        if b % n != i - 1:
            continue
        ids = np.stack([w.ids for w in batch])
        per, nonzero = read_batch(handle, targets, sites, ids, plan)
        miner.update(per, ids.astype(np.int32), np.asarray([w.index for w in batch]), nonzero)
        bar.update(len(batch) * cfg.window * n)
    bar.close()
    return miner


def scan(handle, targets: list[Target], source: str | None = None, *, window: int = 63,
         max_tokens: int = 50_000, k: int = 20, batch_size: int = 16,
         progress: bool = True) -> list[TargetExemplars]:
    """Top-k exemplars only (no bands or controls): the quick form used by ``query``."""
    cfg = MineConfig(window=window, max_tokens=max_tokens, k=k, batch_size=batch_size,
                     per_band=0, controls=0)
    return mine(handle, targets, cfg, source=source, progress=progress)

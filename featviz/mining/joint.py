"""Mining one corpus with several checkpoints of one architecture (``featviz compare``).

One streaming pass: each window batch is tokenized once and read by every model once.
Each model's targets feed their own ``Miner`` (the same records a gallery mines); beside
them the pass keeps what needs more than one model, or every window:

* ``Comoments``: per target, the per-token Pearson correlation between models 0 and 1,
  merged batch by batch in float64 with the pairwise (Chan et al.) update, so long corpora
  lose no precision to cancellation;
* every window's max per target and model (the task-relevance effect size compares these
  distributions between two corpora).

The models must share a tokenizer: the windows are cut once, with the first model's.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

import featviz.mining.corpus as corpus_mod
from featviz.errors import FeatvizError
from featviz.mining.cache import (
    CACHE_VERSION,
    cached_per_target,
    corpus_identity,
    default_cache_dir,
    model_fingerprint,
)
from featviz.mining.miner import MineConfig, Miner, plan_reading, read_batch
from featviz.mining.records import TargetExemplars
from featviz.targets.core import all_sites


class Comoments:
    """Running means, second moments and co-moment of (model 0, model 1) per target."""

    def __init__(self, n_targets: int):
        z = lambda: torch.zeros(n_targets, dtype=torch.float64)  # noqa: E731
        self.n, self.ma, self.mb, self.m2a, self.m2b, self.cab = (z() for _ in range(6))

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """a, b: (T, N) values of the same tokens under the two models (non-finite pairs
        are skipped)."""
        ok = torch.isfinite(a) & torch.isfinite(b)
        a = torch.where(ok, a, 0.0).double()
        b = torch.where(ok, b, 0.0).double()
        n2 = ok.sum(1).double()
        safe = n2.clamp(min=1.0)
        mean_a, mean_b = a.sum(1) / safe, b.sum(1) / safe
        da = torch.where(ok, a - mean_a[:, None], 0.0)
        db = torch.where(ok, b - mean_b[:, None], 0.0)
        n1, n = self.n, self.n + n2
        w = torch.where(n > 0, n1 * n2 / n.clamp(min=1.0), 0.0)
        step = torch.where(n > 0, n2 / n.clamp(min=1.0), 0.0)
        dA, dB = mean_a - self.ma, mean_b - self.mb
        self.ma += dA * step
        self.mb += dB * step
        self.m2a += (da * da).sum(1) + dA * dA * w
        self.m2b += (db * db).sum(1) + dB * dB * w
        self.cab += (da * db).sum(1) + dA * dB * w
        self.n = n

    def corr(self) -> np.ndarray:
        """Pearson correlation per target; NaN where either model's values are constant."""
        den = torch.sqrt(self.m2a * self.m2b)
        r = torch.where(den > 0, self.cab / den.clamp(min=1e-300), torch.nan)
        return r.clamp(-1.0, 1.0).numpy()


@dataclass
class Joint:
    """One target mined by every model over the same windows."""

    target: str
    records: list            # TargetExemplars, one per model
    window_max: list         # per model, every window's max (float32 array, window order)
    corr: float | None = None   # per-token Pearson r between models 0 and 1 (None: one model)

    def to_json(self) -> dict:
        return {"target": self.target, "records": [r.to_json() for r in self.records],
                "window_max": [np.asarray(w, dtype=np.float32).tolist() for w in self.window_max],
                "corr": self.corr}

    @classmethod
    def from_json(cls, d: dict) -> "Joint":
        return cls(d["target"], [TargetExemplars.from_json(r) for r in d["records"]],
                   [np.asarray(w, dtype=np.float32) for w in d["window_max"]], d["corr"])


def mine_joint(handles: list, targets_by_model: list[list], config: MineConfig | None = None, *,
               source: str | None = None, progress: bool = True) -> list[Joint]:
    """Read every target under every model on the same corpus windows, in one pass.
    ``targets_by_model[m]`` are the targets parsed for ``handles[m]`` (same names, same
    order)."""
    cfg = (config or MineConfig()).check()
    names = [[str(t) for t in ts] for ts in targets_by_model]
    if len(handles) != len(targets_by_model) or any(n != names[0] for n in names):
        raise FeatvizError("mine_joint needs the same targets, in the same order, for every model")
    if not names[0]:
        return []
    W, T, M = cfg.window + 1, len(names[0]), len(handles)
    sites = [all_sites(ts) for ts in targets_by_model]
    plans = [plan_reading(ts, h) for ts, h in zip(targets_by_model, handles)]
    miners = [Miner(ts, cfg, W) for ts in targets_by_model]
    comoments = Comoments(T) if M == 2 else None
    wmax: list[list] = [[] for _ in handles]
    start = 0 if cfg.include_bos else 1
    bar = tqdm(total=(cfg.max_tokens // cfg.window) * cfg.window, unit="tok",
               desc=f"mining ({M} models)" if M > 1 else "mining", disable=not progress,
               leave=False)
    for batch in corpus_mod.batched(corpus_mod.windows(handles[0], source, cfg.window,
                                                       max_tokens=cfg.max_tokens), cfg.batch_size):
        ids = np.stack([w.ids for w in batch])
        win = np.asarray([w.index for w in batch])
        pers = []
        for m, h in enumerate(handles):
            per, nonzero = read_batch(h, targets_by_model[m], sites[m], ids, plans[m])
            wmax[m].append(miners[m].update(per, ids.astype(np.int32), win, nonzero))
            pers.append(per)
        if comoments is not None:
            comoments.update(pers[0][:, :, start:].reshape(T, -1),
                             pers[1][:, :, start:].reshape(T, -1))
        bar.update(len(batch) * cfg.window)
    bar.close()
    records = [mn.finish() for mn in miners]
    wm = [np.concatenate(w, axis=1).astype(np.float32) for w in wmax]
    corr = comoments.corr() if comoments is not None else None
    return [Joint(names[0][t], [records[m][t] for m in range(M)], [wm[m][t] for m in range(M)],
                  None if corr is None else float(corr[t])) for t in range(T)]


def joint_cache_key(handles: list, source: str | None, cfg: MineConfig) -> str:
    doc = {"v": CACHE_VERSION, "joint": [model_fingerprint(h) for h in handles],
           "corpus": corpus_identity(source), "mine": cfg.key()}
    return "joint-" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]


def mine_joint_cached(handles: list, targets_by_model: list[list], source: str | None,
                      cfg: MineConfig, *, cache_dir: str | None = None, progress: bool = True
                      ) -> tuple[list[Joint], int]:
    """``mine_joint`` through the on-disk mining cache (one JSON file per target, written
    atomically); returns (results, number read from the cache).  ``cache_dir=""``: no cache."""
    cfg.check()
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    folder = os.path.join(cache_dir, joint_cache_key(handles, source, cfg)) if cache_dir else None
    return cached_per_target(
        folder, [str(t) for t in targets_by_model[0]], Joint.from_json,
        lambda todo: mine_joint(handles, [[ts[i] for i in todo] for ts in targets_by_model],
                                cfg, source=source, progress=progress),
        ok=lambda d: len(d.get("records", [])) == len(handles))

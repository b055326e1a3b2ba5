"""The audit's measurements: readings of a span after a context, hidden-state paths, two-group
splits, one-token attributions."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from featviz.analysis.audit.report import AuditConfig
from featviz.errors import FeatvizError
from featviz.mining.corpus import windows
from featviz.model.forward import RESID_POST, run
from featviz.targets.core import Target
from featviz.targets.kinds import KEY_KINDS
from featviz.targets.read import score_ids


# ---------------------------------------------------------------- pure math
def span_value(target: Target, captures: dict, handle, span_start: int) -> torch.Tensor:
    """The target's value over the tokens from ``span_start`` on, as if they followed BOS
    directly: @last reads the last token, @max/@mean run over the span, @I counts from the
    token before the span (so @1 is the span's first token), and an attention key K is the
    span's K-th token (K = 0: BOS; negative K counts from the end, as before)."""
    total = 0
    for w, a in target.terms():
        if a.kind in KEY_KINDS:
            t = captures[a.site].shape[-1]                 # keys in the whole sequence
            k = a.key_index(1 + t - span_start)            # in BOS + span
            a = replace(a, key=0 if k == 0 else span_start - 1 + k)
        per = a.per_position(captures, handle)[:, span_start - 1:]
        total = total + w * a.reduce(per)
    return total


def reduced_position(target: Target, per: torch.Tensor) -> int:
    """Where a single-sequence (1, seq) reading is reduced: the position the path check uses."""
    atoms = [a for _, a in target.terms()]
    r = atoms[0].reduction if len(atoms) == 1 else "last"
    t = per.shape[-1]
    if r == "max":
        return int(per[0, 1:].argmax()) + 1 if t > 1 else 0
    if r in ("last", "mean"):
        return t - 1
    i = int(r)
    return i if i >= 0 else t + i


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return a @ b.T


def path_scores(h_syn: np.ndarray, h_ex: np.ndarray, h_rand: np.ndarray,
                min_contrast: float = 0.02) -> dict:
    """Per layer, how close the synthetic hidden state comes to the nearest exemplar's
    (cosine after centring on the random positions' mean), against random corpus positions.

    h_syn (L, d), h_ex (L, n, d), h_rand (L, m, d).  Nearest-neighbour similarities:
    syn = max_i cos(syn, ex_i); ex = mean_i max_{j != i} cos(ex_i, ex_j); rand = mean_r
    max_i cos(rand_r, ex_i).  score = (syn - rand) / (ex - rand): 1 = as close as exemplars
    come to each other, 0 = as close as a random position.  The nearest neighbour (not the
    mean) keeps a feature with several kinds of exemplar from looking unnatural.  Layers
    where exemplars are barely closer to each other than random positions are (contrast
    < min_contrast) get score None.
    """
    out = {"syn": [], "ex": [], "rand": [], "rand_sd": [], "score": [], "z": []}
    n = h_ex.shape[1]
    for l in range(h_ex.shape[0]):
        mu = h_rand[l].mean(0)
        s, e, r = h_syn[l] - mu, h_ex[l] - mu, h_rand[l] - mu
        syn = float(_cos(s[None], e).max())
        if n > 1:
            ee = _cos(e, e)
            np.fill_diagonal(ee, -np.inf)
            ex = float(ee.max(1).mean())
        else:
            ex = float("nan")
        rr = _cos(r, e).max(1)
        rand, sd = float(rr.mean()), float(rr.std())
        contrast = ex - rand
        out["syn"].append(syn)
        out["ex"].append(ex)
        out["rand"].append(rand)
        out["rand_sd"].append(sd)
        out["score"].append((syn - rand) / contrast if contrast >= min_contrast else None)
        out["z"].append((syn - rand) / sd if sd > 0 else None)
    valid = [s for s in out["score"] if s is not None]
    out["median_score"] = float(np.median(valid)) if valid else None
    zs = [z for z in out["z"] if z is not None]
    out["median_z"] = float(np.median(zs)) if zs else None
    return out


def two_groups(h: np.ndarray, seed: int = 0, inits: int = 8) -> dict:
    """Split rows of ``h`` into two groups (spherical 2-means) and measure the split.

    Returns labels, group sizes, the mean silhouette (cosine distance) and, per group,
    the index of the row closest to its centre.
    """
    n = len(h)
    if n < 4:
        return {"labels": [0] * n, "sizes": [n, 0], "silhouette": None, "representatives": []}
    x = h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    best = None
    for it in range(inits):
        i0 = int(rng.integers(n)) if it else 0
        i1 = int(np.argmin(x @ x[i0]))                   # farthest from the first
        c = x[[i0, i1]]
        for _ in range(50):
            lab = np.argmax(x @ c.T, axis=1)
            if lab.min() == lab.max():
                break
            new = np.stack([x[lab == g].mean(0) for g in (0, 1)])
            new /= np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)
            if np.allclose(new, c):
                break
            c = new
        lab = np.argmax(x @ c.T, axis=1)
        if lab.min() == lab.max():
            continue
        inertia = float((x * c[lab]).sum())
        if best is None or inertia > best[0]:
            best = (inertia, lab, c)
    if best is None:
        return {"labels": [0] * n, "sizes": [n, 0], "silhouette": 0.0, "representatives": [0]}
    _, lab, c = best
    d = 1.0 - x @ x.T
    sil = []
    for i in range(n):
        own, other = lab == lab[i], lab != lab[i]
        if own.sum() <= 1:
            sil.append(0.0)
            continue
        a = d[i, own].sum() / (own.sum() - 1)
        b = d[i, other].mean()
        sil.append((b - a) / max(a, b, 1e-12))
    if (lab == 1).sum() > (lab == 0).sum():
        lab, c = 1 - lab, c[::-1]
    reps = [int(np.flatnonzero(lab == g)[np.argmax(x[lab == g] @ c[g])]) for g in (0, 1)]
    return {"labels": lab.tolist(), "sizes": [int((lab == 0).sum()), int((lab == 1).sum())],
            "silhouette": float(np.mean(sil)), "representatives": reps}


def drops(base: float, alt_values: np.ndarray) -> np.ndarray:
    """Per position: base value minus the best value any replacement reached (n, k) -> (n,).

    A large drop means no plausible replacement keeps the activation: the token carries it.
    """
    best = np.where(np.isfinite(alt_values), alt_values, -np.inf).max(axis=1)
    return np.where(np.isfinite(best), base - best, np.nan)


# ---------------------------------------------------------------- model-side helpers
def forward_ids(handle, sites, ids: torch.Tensor, need_logits=False):
    with torch.no_grad():
        return run(handle, sites, input_ids=ids.to(handle.device), need_logits=need_logits)


def values_batched(handle, target, rows: list[list[int]], span_start: int | None,
                    position: int | None = None, batch: int = 32) -> np.ndarray:
    """Target values for equal-length full rows (BOS first): reduced over the span from
    ``span_start``, or the per-position value at ``position``."""
    if not rows:
        return np.zeros(0)
    if position is not None:
        read = lambda t, caps: t.per_position(caps, handle)[:, position].float()  # noqa: E731
    else:
        read = lambda t, caps: span_value(t, caps, handle, span_start).float()  # noqa: E731
    vals, _, _ = score_ids(handle, [target], rows, batch_size=batch, read=read)
    return vals[0].cpu().numpy()


def hidden_states(handle, rows: list[list[int]], positions: list[int], layers: list[int]) -> np.ndarray:
    """Residual stream after each of ``layers`` at one position per row: (L, rows, d)."""
    sites = {(RESID_POST, l) for l in layers}
    out = np.zeros((len(layers), len(rows), handle.d_model), dtype=np.float64)
    for j, (row, p) in enumerate(zip(rows, positions)):
        caps, _ = forward_ids(handle, sites, torch.tensor([row], dtype=torch.long))
        for i, l in enumerate(layers):
            out[i, j] = caps[(RESID_POST, l)][0, p].float().cpu().numpy()
    return out


def sample_windows(handle, cfg: AuditConfig, sizes: list[tuple[int, int]]) -> list[list]:
    """For each (n, min_len): n random corpus windows (token ids, BOS first) of the mined
    slice, at least min_len long (one tokenisation pass for all)."""
    ws = [w.ids.tolist() for w in windows(handle, cfg.corpus, cfg.mine.window,
                                          max_tokens=cfg.mine.max_tokens)]
    rng = np.random.default_rng(cfg.seed)
    out = []
    for n, min_len in sizes:
        ok = [w for w in ws if len(w) >= min_len]
        if not ok:
            raise FeatvizError(f"the corpus has no window of {min_len} tokens for the audit; "
                               "mine more tokens or lower --window")
        out.append([ok[i] for i in rng.choice(len(ok), size=n, replace=len(ok) < n)])
    return out


def alternatives(handle, row: list[int], positions: list[int], k: int, mask) -> list[list[int]]:
    """The model's own top-k readable predictions at each position (the actual token excluded)."""
    with torch.no_grad():
        _, logits = run(handle, set(), input_ids=torch.tensor([row], device=handle.device),
                        need_logits=True)
    lg = logits[0].float().masked_fill(~mask.to(logits.device), -math.inf)
    out = []
    for p in positions:
        cand = torch.topk(lg[p - 1], k + 1).indices.tolist()
        out.append([c for c in cand if c != row[p]][:k])
    return out


def attribute(handle, target, row, positions, value_pos, base, k, mask, span_start=None):
    alts = alternatives(handle, row, positions, k, mask)
    rows, shape = [], (len(positions), k)
    for p, cands in zip(positions, alts):
        for c in cands + [row[p]] * (k - len(cands)):
            r = list(row)
            r[p] = c
            rows.append(r)
    vals = values_batched(handle, target, rows, span_start, position=value_pos)
    d = drops(base, vals.reshape(shape))
    best_alt = [handle.decode([a[int(np.argmax(v))]]) if a else None
                for a, v in zip(alts, vals.reshape(shape))]
    return [{"token": handle.decode([row[p]]), "position": p, "drop": float(x),
             "share": float(x / base) if base else None, "best_alternative": b}
            for p, x, b in zip(positions, d, best_alt)]

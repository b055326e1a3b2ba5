"""The audit: evidence for and against what a feature seems to mean.

    report = featviz.audit.audit(handle, ["mlp:3:17"], AuditConfig())
    print(format_report(report))

For each target it mines the corpus, dreams, and runs seven checks, each with its
figures, the thresholds it used, and a verdict ("ok", "flag", or "n/a" when the
check cannot apply; "info" for the attribution, which has no verdict):

1. superstimulus       best fluent synthetic / corpus max
2. hidden-trigger      the unit almost never fires on the corpus, synthetic text drives it
3. fluency-gap         activation with no fluency cap / with the cap
4. context             synthetic text after random corpus contexts; exemplars with their
                       leading context swapped
5. path                hidden states below the target: synthetic vs top exemplars, against
                       random corpus positions
6. attribution         per-token drop when a token is replaced by its best alternative
7. polysemantic        do the top exemplars split into two separate groups?

The math lives in pure functions (``span_value``, ``path_scores``, ``two_groups``,
``drops``) so each can be tested on arrays whose answer is known.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from featviz.analysis.flags import (
    Thresholds,
    fluency_gap,
    hidden_trigger,
    superstimulus,
)
from featviz.errors import FeatvizError
from featviz.mining.cache import mine_cached
from featviz.mining.corpus import windows
from featviz.mining.miner import MineConfig
from featviz.mining.records import TargetExemplars
from featviz.mining.reference import corpus_reference
from featviz.model.forward import RESID_POST, run
from featviz.model.vocab import readable_mask
from featviz.search.api import dream
from featviz.search.config import DreamConfig
from featviz.search.result import DreamResult
from featviz.targets.core import Target
from featviz.targets.read import score_ids
from featviz.targets.spec import as_target

AUDIT_VERSION = 1


@dataclass
class AuditConfig:
    mine: MineConfig = field(default_factory=lambda: MineConfig(max_tokens=20_000))
    dream: DreamConfig = field(default_factory=lambda: DreamConfig(budget_seconds=30.0))
    corpus: str | None = None
    cache_dir: str | None = None          # mining cache (None: default; "": off)
    thresholds: Thresholds = field(default_factory=Thresholds)
    contexts: int = 16                    # random corpus contexts for the context check
    context_len: int = 24                 # tokens of each context
    keep: int = 4                         # exemplar tokens kept before (and at) the peak
    exemplars: int = 8                    # top exemplars used by the context/path/attribution checks
    baseline: int = 64                    # random corpus positions for the path baseline
    path_layers: int = 8                  # at most this many layers below the target
    alternatives: int = 16                # replacement tokens tried per position (attribution)
    attribution_span: int = 12            # exemplar tokens up to the peak that are attributed
    seed: int = 0

    def check(self) -> "AuditConfig":
        self.mine.check()
        self.dream.check()
        for name in ("contexts", "context_len", "keep", "exemplars", "baseline", "path_layers",
                     "alternatives", "attribution_span"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise FeatvizError(f"audit option {name} must be a positive integer, got {v!r}")
        return self


@dataclass
class Check:
    name: str
    verdict: str                 # "ok" | "flag" | "n/a" | "info"
    figures: dict
    thresholds: dict
    note: str = ""


@dataclass
class TargetAudit:
    target: str
    description: str
    checks: list
    corpus: dict                 # corpus max, density, windows, tokens
    synthetic: dict              # best / best_fluent text, activation, xe
    seconds: float = 0.0

    @property
    def flags(self) -> list[str]:
        return [c.name for c in self.checks if c.verdict == "flag"]

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_json(self) -> dict:
        return {"target": self.target, "description": self.description, "flags": self.flags,
                "corpus": self.corpus, "synthetic": self.synthetic, "seconds": self.seconds,
                "checks": [{**asdict(c), "summary": summary_line(c.name, c.figures)}
                           for c in self.checks]}


@dataclass
class AuditReport:
    model: dict
    corpus: str
    thresholds: dict
    targets: list

    def to_json(self) -> dict:
        return {"schema": "featviz.audit", "version": AUDIT_VERSION, "model": self.model,
                "corpus": self.corpus, "thresholds": self.thresholds,
                "targets": [t.to_json() for t in self.targets]}


# ---------------------------------------------------------------- pure math
def span_value(target: Target, captures: dict, handle, span_start: int) -> torch.Tensor:
    """The target's value over the tokens from ``span_start`` on, as if they followed BOS
    directly: @last reads the last token, @max/@mean run over the span, @I counts from the
    token before the span (so @1 is the span's first token), and an attention key K is the
    span's K-th token (K = 0: BOS; negative K counts from the end, as before)."""
    total = 0
    for w, a in target.terms():
        if a.kind == "attn":
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
def _forward(handle, sites, ids: torch.Tensor, need_logits=False):
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


def _hidden(handle, rows: list[list[int]], positions: list[int], layers: list[int]) -> np.ndarray:
    """Residual stream after each of ``layers`` at one position per row: (L, rows, d)."""
    sites = {(RESID_POST, l) for l in layers}
    out = np.zeros((len(layers), len(rows), handle.d_model), dtype=np.float64)
    for j, (row, p) in enumerate(zip(rows, positions)):
        caps, _ = _forward(handle, sites, torch.tensor([row], dtype=torch.long))
        for i, l in enumerate(layers):
            out[i, j] = caps[(RESID_POST, l)][0, p].float().cpu().numpy()
    return out


def _sample_windows(handle, cfg: AuditConfig, sizes: list[tuple[int, int]]) -> list[list]:
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


# ---------------------------------------------------------------- the checks
def scalar_checks(ex: TargetExemplars, res: DreamResult, th: Thresholds, target) -> list[Check]:
    cmax = ex.max if math.isfinite(ex.max) else None
    ref = corpus_reference(ex, target, **res.shape)     # like for like, or None and why
    best = res.best.activation if res.best else None
    fluent = res.best_fluent.activation if res.best_fluent else None
    na = ref.value is None
    sup = superstimulus(fluent, ref.value, th)
    out = [Check("superstimulus", "n/a" if na else "flag" if sup else "ok",
                 {"corpus_max": cmax, "corpus_reference": ref.to_json(), "best_fluent": fluent,
                  "best": best, "ratio_fluent": ref.ratio(fluent), "ratio_best": ref.ratio(best)},
                 {"superstimulus": th.superstimulus},
                 f"no like-for-like corpus figure: {ref.basis}" if na else
                 "fluent synthetic text far above anything in the corpus" if sup else "")]
    trig = hidden_trigger(best, ref.value, ex.density, th)
    out.append(Check("hidden-trigger", "n/a" if na else "flag" if trig else "ok",
                     {"density": ex.density, "corpus_max": cmax,
                      "corpus_reference": ref.to_json(), "best": best,
                      "trigger_text": res.best.text if res.best else None,
                      "trigger_xe": res.best.xe if res.best else None},
                     {"silent_density": th.silent_density, "silent_rel": th.silent_rel,
                      "silent_abs": th.silent_abs},
                     f"no like-for-like corpus figure: {ref.basis}" if na else
                     "the unit is (nearly) silent on the corpus yet synthetic text drives it"
                     if trig else ""))
    gap = fluency_gap(best, fluent, th)
    out.append(Check("fluency-gap", "flag" if gap else "ok",
                     {"best": best, "best_fluent": fluent,
                      "gap": best / fluent if best is not None and fluent and fluent > 0 else None,
                      "xe_cap": res.config.get("xe_cap")},
                     {"fluency_gap": th.fluency_gap},
                     "only text above the fluency cap drives the unit" if gap else ""))
    return out


def context_check(handle, target, syn_ids, own, ex: TargetExemplars, ctx_rows, cfg) -> Check:
    th = cfg.thresholds
    figs: dict = {"own": own}
    ratio_syn = ratio_ex = None
    if syn_ids and own is not None and own > 0:
        rows = [[handle.bos_id] + c[1:1 + cfg.context_len] + syn_ids for c in ctx_rows]
        vals = values_batched(handle, target, rows, span_start=1 + cfg.context_len)
        figs["in_context"] = [float(v) for v in vals]
        figs["in_context_median"] = float(np.median(vals))
        ratio_syn = float(np.median(vals)) / own
    figs["ratio_synthetic"] = ratio_syn
    per_ex = []
    for i, e in enumerate(ex.top[: cfg.exemplars]):
        p = e.peak
        lead = p - cfg.keep                     # tokens 1..lead are the leading context
        if lead < 1 or not e.value > 0:
            continue
        rows = []
        for j in range(4):                      # four other leading contexts per exemplar
            c = ctx_rows[(4 * i + j) % len(ctx_rows)][1:]
            filler = (c * (lead // len(c) + 1))[:lead]
            rows.append([e.token_ids[0]] + filler + e.token_ids[lead + 1: p + 1])
        vals = values_batched(handle, target, rows, None, position=p)
        per_ex.append(float(np.median(vals)) / e.value)
    figs["ratio_exemplars"] = ratio_ex = float(np.median(per_ex)) if per_ex else None
    figs["exemplars_used"] = len(per_ex)
    if ratio_syn is None:
        return Check("context", "n/a", figs, {"context_drop": th.context_drop},
                     "no positive synthetic activation to test")
    collapses = ratio_syn < th.context_drop
    natural_holds = ratio_ex is None or ratio_ex >= th.context_drop
    flag = collapses and natural_holds
    note = ("the synthetic trigger collapses after other text, while the exemplars keep "
            "their activation without their leading context" if flag else
            "the synthetic trigger and the exemplars both depend on their leading context"
            if collapses else "")
    return Check("context", "flag" if flag else "ok", figs, {"context_drop": th.context_drop}, note)


def path_check(handle, target, syn_full, syn_pos, ex: TargetExemplars, base_rows, cfg):
    th = cfg.thresholds
    L = target.max_layer
    if L == 0 or not syn_full or not ex.top:
        return Check("path", "n/a", {}, {"path_z": th.path_z},
                     "needs a target above layer 0, synthetic text and exemplars"), None
    layers = sorted(set(np.linspace(0, L - 1, min(cfg.path_layers, L)).round().astype(int).tolist()))
    top = ex.top                                   # all k: features may have several kinds
    rng = np.random.default_rng(cfg.seed + 1)
    base_pos = [int(rng.integers(1, len(r))) for r in base_rows]
    all_layers = layers + [L]
    h_syn = _hidden(handle, [syn_full], [syn_pos], all_layers)
    h_ex = _hidden(handle, [e.token_ids for e in top], [e.peak for e in top], all_layers)
    h_rand = _hidden(handle, base_rows, base_pos, all_layers)
    ps = path_scores(h_syn[:-1, 0], h_ex[:-1], h_rand[:-1])
    figs = {"layers": layers, **{k: ps[k] for k in ("syn", "ex", "rand", "score", "z")},
            "median_score": ps["median_score"], "median_z": ps["median_z"]}
    if ps["median_score"] is None or ps["median_z"] is None:
        return Check("path", "n/a", figs, {"path_z": th.path_z},
                     "the exemplars are no closer to each other than random positions"), h_rand[-1]
    flag = ps["median_z"] < th.path_z
    return Check("path", "flag" if flag else "ok", figs, {"path_z": th.path_z},
                 "below the target, the synthetic input is farther from every exemplar than "
                 "random corpus positions are: it reaches the unit along a path natural text "
                 "does not take" if flag else ""), h_rand[-1]


def _alternatives(handle, row: list[int], positions: list[int], k: int, mask) -> list[list[int]]:
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
    alts = _alternatives(handle, row, positions, k, mask)
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


def attribution_check(handle, target, syn_full, own, ex: TargetExemplars, cfg, mask) -> Check:
    figs: dict = {}
    if syn_full and own is not None:
        figs["synthetic"] = attribute(handle, target, syn_full, list(range(1, len(syn_full))),
                                       None, own, cfg.alternatives, mask, span_start=1)
    if ex.top:
        e = ex.top[0]
        pos = list(range(max(1, e.peak - cfg.attribution_span + 1), e.peak + 1))
        figs["exemplar"] = attribute(handle, target, e.token_ids, pos, e.peak, e.value,
                                      cfg.alternatives, mask)
    if not figs:
        return Check("attribution", "n/a", figs, {}, "nothing to attribute")
    carry = lambda rows: [r["token"] for r in sorted(rows, key=lambda r: -r["drop"])[:3]  # noqa: E731
                          if r["drop"] > 0]
    figs["carriers_synthetic"] = carry(figs.get("synthetic", []))
    figs["carriers_exemplar"] = carry(figs.get("exemplar", []))
    return Check("attribution", "info", figs, {"alternatives": cfg.alternatives},
                 "drop = activation minus the best activation any of the model's top "
                 "alternatives reaches at that position")


def poly_check(handle, target, ex: TargetExemplars, h_rand_target, cfg) -> Check:
    th = cfg.thresholds
    top = ex.top
    if len(top) < 6:
        return Check("polysemantic", "n/a", {"exemplars": len(top)},
                     {"poly_min_group": th.poly_min_group, "poly_silhouette": th.poly_silhouette},
                     "needs at least 6 exemplars")
    L = target.max_layer
    h = _hidden(handle, [e.token_ids for e in top], [e.peak for e in top], [L])[0]
    if h_rand_target is not None:
        h = h - h_rand_target.mean(0)
    g = two_groups(h, seed=cfg.seed)
    share = min(g["sizes"]) / len(top)
    sil = g["silhouette"]
    flag = sil is not None and share >= th.poly_min_group and sil >= th.poly_silhouette
    reps = []
    for r in g["representatives"]:
        e = top[r]
        reps.append({"value": e.value, "window": e.window,
                     "context": handle.decode(e.token_ids[max(1, e.peak - 10): e.peak]),
                     "peak_token": handle.decode([e.token_ids[e.peak]])})
    return Check("polysemantic", "flag" if flag else "ok",
                 {"sizes": g["sizes"], "silhouette": sil, "smaller_share": share,
                  "labels": g["labels"], "representatives": reps},
                 {"poly_min_group": th.poly_min_group, "poly_silhouette": th.poly_silhouette},
                 "the top exemplars split into two separate groups" if flag else "")


# ---------------------------------------------------------------- the run
def audit_one(handle, target: Target, ex: TargetExemplars, res: DreamResult, cfg: AuditConfig,
              ctx_rows: list, base_rows: list, mask) -> TargetAudit:
    """All checks for one target, given its mined exemplars and dreaming result."""
    t0 = time.perf_counter()
    syn = res.best_fluent or res.best
    syn_ids = list(syn.token_ids) if syn else []
    own = syn.activation if syn else None
    syn_full = [handle.bos_id] + syn_ids if syn_ids else []
    checks = scalar_checks(ex, res, cfg.thresholds, target)
    checks.append(context_check(handle, target, syn_ids, own, ex, ctx_rows, cfg))
    syn_pos = 0
    if syn_full:
        caps, _ = _forward(handle, target.sites(), torch.tensor([syn_full]))
        syn_pos = reduced_position(target, target.per_position(caps, handle).float())
    path, h_rand_target = path_check(handle, target, syn_full, syn_pos, ex, base_rows, cfg)
    checks.append(path)
    checks.append(attribution_check(handle, target, syn_full, own, ex, cfg, mask))
    checks.append(poly_check(handle, target, ex, h_rand_target, cfg))
    c = lambda x: None if x is None else {"text": x.text, "activation": x.activation,  # noqa: E731
                                          "xe": x.xe, "tokens": x.tokens}
    return TargetAudit(
        target=str(target), description=target.describe(handle), checks=checks,
        corpus={"max": ex.max if math.isfinite(ex.max) else None, "density": ex.density,
                "n_windows": ex.n_windows, "n_tokens": ex.n_tokens, "nonfinite": ex.nonfinite},
        synthetic={"best": c(res.best), "best_fluent": c(res.best_fluent),
                   "xe_cap": res.config.get("xe_cap")},
        seconds=time.perf_counter() - t0)


def audit(handle, targets, config: AuditConfig | None = None, *, progress: bool = True,
          mined: list | None = None, dreams: list | None = None) -> AuditReport:
    """Mine, dream and check every target.  ``mined`` / ``dreams`` reuse earlier results
    (one per target, in order) instead of recomputing them."""
    cfg = (config or AuditConfig()).check()
    targets = [as_target(t, handle) for t in (targets if isinstance(targets, list) else [targets])]
    if not targets:
        raise FeatvizError("no targets given; pass e.g. --target mlp:6:12")
    if mined is None:
        mined, _ = mine_cached(handle, targets, cfg.corpus, cfg.mine, cache_dir=cfg.cache_dir,
                               progress=progress)
    ctx_rows, base_rows = _sample_windows(handle, cfg, [(cfg.contexts, cfg.context_len + 1),
                                                        (cfg.baseline, 3)])
    mask = readable_mask(handle, cfg.dream.vocab)
    out = []
    bar = tqdm(total=len(targets), unit="target", desc="auditing", disable=not progress)
    for i, (t, ex) in enumerate(zip(targets, mined)):
        res = dreams[i] if dreams is not None else dream(handle, t, cfg.dream, progress=progress)
        out.append(audit_one(handle, t, ex, res, cfg, ctx_rows, base_rows, mask))
        bar.update(1)
    bar.close()
    return AuditReport(model=handle.describe(), corpus=cfg.corpus or "wiki",
                       thresholds=asdict(cfg.thresholds), targets=out)


# ---------------------------------------------------------------- terminal output
def _fmt(v, f=".3f"):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, f) if isinstance(v, (int, float)) else str(v)


def summary_line(name: str, f: dict) -> str:
    """One line of figures for a check (terminal table and HTML section)."""
    if name == "superstimulus":
        ref = f.get("corpus_reference") or {}
        if ref.get("value") is None:
            return f"no like-for-like corpus figure ({ref.get('basis')})"
        return (f"fluent/corpus {_fmt(f['ratio_fluent'], '.2f')}, any/corpus "
                f"{_fmt(f['ratio_best'], '.2f')} (corpus {_fmt(ref['value'])}: {ref['basis']})")
    if name == "hidden-trigger":
        return (f"density {_fmt(f['density'], '.2e')}, corpus max {_fmt(f['corpus_max'])}, "
                f"synthetic {_fmt(f['best'])}: {f['trigger_text']!r}")
    if name == "fluency-gap":
        return f"any {_fmt(f['best'])} / fluent {_fmt(f['best_fluent'])} = {_fmt(f['gap'], '.2f')}"
    if name == "context":
        return (f"synthetic after random contexts keeps {_fmt(f.get('ratio_synthetic'), '.2f')}; "
                f"exemplars with swapped lead keep {_fmt(f.get('ratio_exemplars'), '.2f')}")
    if name == "path":
        return (f"path score {_fmt(f.get('median_score'), '.2f')} (1 = like exemplars, 0 = like "
                f"random positions), z {_fmt(f.get('median_z'), '.1f')} vs random positions")
    if name == "attribution":
        return (f"carried by {f.get('carriers_synthetic')} (synthetic), "
                f"{f.get('carriers_exemplar')} (top exemplar)")
    if name == "polysemantic":
        return (f"groups {f.get('sizes')}, silhouette {_fmt(f.get('silhouette'), '.2f')}")
    return ""


def format_report(report: AuditReport) -> str:
    lines = []
    for t in report.targets:
        lines.append(f"# {t.target}: {t.description}")
        lines.append(f"  flags: {', '.join(t.flags) or 'none'}")
        for c in t.checks:
            lines.append(f"  {c.name:<15} {c.verdict:<5} {summary_line(c.name, c.figures)}")
        lines.append("")
    return "\n".join(lines)

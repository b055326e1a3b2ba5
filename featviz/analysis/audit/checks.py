"""The audit's checks: small functions of one signature, ``check(subject) -> [Check]``, run in
the order of ``CHECKS`` (to add one, write it here and list it)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from featviz.analysis.audit.figures import (
    attribute,
    hidden_states,
    path_scores,
    two_groups,
    values_batched,
)
from featviz.analysis.audit.report import Check
from featviz.analysis.flags import (
    Thresholds,
    fluency_gap,
    hidden_trigger,
    superstimulus,
)
from featviz.mining.records import TargetExemplars
from featviz.mining.reference import corpus_reference
from featviz.search.result import DreamResult


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
    L = target.depth(handle)
    if L == 0 or not syn_full or not ex.top:
        return Check("path", "n/a", {}, {"path_z": th.path_z},
                     "needs a target above layer 0, synthetic text and exemplars"), None
    layers = sorted(set(np.linspace(0, L - 1, min(cfg.path_layers, L)).round().astype(int).tolist()))
    top = ex.top                                   # all k: features may have several kinds
    rng = np.random.default_rng(cfg.seed + 1)
    base_pos = [int(rng.integers(1, len(r))) for r in base_rows]
    all_layers = layers + [L]
    h_syn = hidden_states(handle, [syn_full], [syn_pos], all_layers)
    h_ex = hidden_states(handle, [e.token_ids for e in top], [e.peak for e in top], all_layers)
    h_rand = hidden_states(handle, base_rows, base_pos, all_layers)
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
    L = target.depth(handle)
    h = hidden_states(handle, [e.token_ids for e in top], [e.peak for e in top], [L])[0]
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


# ---------------------------------------------------------------- the registry
@dataclass
class Subject:
    """What every check may read about one audited target."""

    handle: object
    target: object
    ex: TargetExemplars            # its mined exemplars
    res: DreamResult               # its dream
    cfg: object                    # AuditConfig
    ctx_rows: list                 # random corpus contexts (context check)
    base_rows: list                # random corpus positions (path check's baseline)
    mask: object                   # the readable vocabulary (attribution alternatives)
    syn_ids: list                  # the synthetic text's tokens (no BOS), [] when none
    own: float | None              # its verified activation
    syn_pos: int                   # the position its reduction reads
    shared: dict = field(default_factory=dict)   # what one check leaves for a later one

    @property
    def syn_full(self) -> list:
        return [self.handle.bos_id] + self.syn_ids if self.syn_ids else []


def _scalar(s: Subject) -> list[Check]:
    return scalar_checks(s.ex, s.res, s.cfg.thresholds, s.target)


def _context(s: Subject) -> list[Check]:
    return [context_check(s.handle, s.target, s.syn_ids, s.own, s.ex, s.ctx_rows, s.cfg)]


def _path(s: Subject) -> list[Check]:
    check, s.shared["h_rand_target"] = path_check(s.handle, s.target, s.syn_full, s.syn_pos,
                                                  s.ex, s.base_rows, s.cfg)
    return [check]


def _attribution(s: Subject) -> list[Check]:
    return [attribution_check(s.handle, s.target, s.syn_full, s.own, s.ex, s.cfg, s.mask)]


def _polysemantic(s: Subject) -> list[Check]:
    return [poly_check(s.handle, s.target, s.ex, s.shared.get("h_rand_target"), s.cfg)]


# superstimulus, hidden-trigger, fluency-gap, context, path, attribution, polysemantic
CHECKS = (_scalar, _context, _path, _attribution, _polysemantic)

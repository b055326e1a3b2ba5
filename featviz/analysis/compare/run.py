"""How targets change between two checkpoints of one architecture (base and fine-tuned),
and which targets a task corpus uses.

    res = compare(base, ["mlp:6:0-63"], CompareConfig(), against=tuned)
    for c in res.targets:                 # ranked by drift, highest first
        print(c.target, c.verdict, c.drift)
    res = compare(model, ["mlp:6:0-63"], CompareConfig(task_corpus="chem.txt"))

Stages: the targets are parsed for each model (a target that exists in one model only is
refused before any model work) -> one streaming pass per corpus in which every window is
read by each model (``mining.joint``, through the mining cache) -> corpus figures and a
first drift -> dreaming for each model (the gallery's batching, ``search.api.dream_group``),
for all targets or the ``dream_top`` ranked highest -> each model's best text read under
both models (the transfer) -> drift, verdict, ranking.  The figures are defined in
``analysis.compare.figures``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from featviz.analysis.compare.figures import (
    DriftThresholds,
    drift_components,
    drift_score,
    effect_size,
    ratio,
    top_overlap,
    verdict,
)
from featviz.errors import FeatvizError
from featviz.mining.cache import model_fingerprint
from featviz.mining.joint import mine_joint_cached
from featviz.mining.miner import MineConfig
from featviz.mining.records import TargetExemplars
from featviz.search.api import dream_group
from featviz.search.budget import fit_group
from featviz.search.config import DreamConfig
from featviz.targets.read import score_ids
from featviz.targets.spec import as_target, parse_targets

SCHEMA_VERSION = 1
_SAME = ("arch", "model_type", "d_model", "d_mlp", "n_heads", "n_kv_heads", "head_dim",
         "vocab_size", "bos_id")


@dataclass
class CompareConfig:
    mine: MineConfig = field(default_factory=lambda: MineConfig(max_tokens=20_000))
    dream: DreamConfig | None = field(default_factory=lambda: DreamConfig(budget_seconds=20.0))
    dream_top: int | None = None        # dream only the N targets ranked highest by the corpus
                                        # figures (None: every target)
    corpus: str | None = None           # the general corpus (None: the embedded Wikipedia)
    task_corpus: str | None = None
    cache_dir: str | None = None        # None: ~/.cache/featviz/mining; "": no cache
    dream_group: int | None = None      # targets dreamt in one batch (None: as many as fit on
                                        # a GPU, else 1; search.budget.fit_group)
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)

    def check(self) -> "CompareConfig":
        self.mine.check()
        if self.dream is not None:
            self.dream.check()
        for name in ("dream_top", "dream_group"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise FeatvizError(f"--{name.replace('_', '-')} must be at least 1, got {v!r}")
        return self

    def settings(self) -> dict:
        return {"mine": self.mine.key(), "dream": self.dream.flat() if self.dream else None,
                "dream_top": self.dream_top, "thresholds": asdict(self.thresholds)}


@dataclass
class Side:
    """One model's view of one target."""

    model: str
    corpus: TargetExemplars                  # mined on the general corpus
    task: TargetExemplars | None = None      # mined on the task corpus
    relevance: dict | None = None            # ``figures.effect_size`` of task vs general
    synthetic: dict | None = None            # the best dreamed text, read under every model
    dream_error: str | None = None


@dataclass
class TargetComparison:
    target: str
    description: str
    sides: list                              # Side per model (A, then B)
    figures: dict = field(default_factory=dict)
    components: dict = field(default_factory=dict)
    drift: float | None = None
    verdict: str | None = None
    reason: str | None = None


@dataclass
class CompareResult:
    models: list                             # describe() + fingerprint per model
    corpus: str
    task_corpus: str | None
    settings: dict
    ranked_by: str                           # "drift" or "relevance"
    targets: list                            # TargetComparison, ranked
    handle: Any = field(default=None, repr=False)   # for token strings in to_json

    def to_json(self) -> dict:
        from featviz.analysis.compare.report import result_json
        return result_json(self)


# ---------------------------------------------------------------- stages
def check_comparable(a, b) -> None:
    """Refuse two models that do not share an architecture, widths and tokenizer.  ``a``
    and ``b`` are handles, or dicts of the same fields (``model.loading.peek_shape``, read
    before any weights load; only the fields both give are compared)."""
    get = lambda x, n: x.get(n) if isinstance(x, dict) else getattr(x, n)  # noqa: E731
    for name in _SAME:
        va, vb = get(a, name), get(b, name)
        if va is not None and vb is not None and va != vb:
            raise FeatvizError(f"cannot compare: model A has {name} {va}, model B has {vb}; "
                               "compare two checkpoints of one architecture")
    if isinstance(a, dict) or isinstance(b, dict):
        return
    if a.tokenizer is not b.tokenizer and a.tokenizer.get_vocab() != b.tokenizer.get_vocab():
        raise FeatvizError("cannot compare: the two models' tokenizers differ; compare two "
                           "checkpoints that share a tokenizer")


def parse_for_each(handles: list, targets: list) -> list[list]:
    """The targets (specs, ranges expand, or Target objects) parsed for every model: same
    names, same order.  A target that does not exist in model B is refused."""
    first = [t for spec in targets for t in (parse_targets(spec, handles[0])
                                             if isinstance(spec, str) else [spec])]
    names = [str(t) for t in first]
    if len(set(names)) != len(names):
        raise FeatvizError("the same target is listed twice; list each target once")
    out = [first]
    for h in handles[1:]:
        try:
            out.append([as_target(n, h) for n in names])
        except FeatvizError as e:
            raise FeatvizError(f"a target exists in model A but not in model B: {e}") from None
    return out


def _best_text(handles: list, targets: list, res) -> dict | None:
    """A dream's best text (fluent if there is one), read exactly under every model."""
    c = (res.best_fluent or res.best) if res is not None else None
    if c is None:
        return None
    h0 = handles[0]
    pre, suf = (h0.encode(res.config.get(k) or "") for k in ("prefix", "suffix"))
    ids = [h0.bos_id, *pre, *c.token_ids, *suf]
    start, n = 1 + len(pre), len(c.token_ids)
    out = {"text": c.text, "fluent": c is res.best_fluent, "token_ids": ids,
           "tokens": h0.token_strings(ids), "fixed": [start, len(suf)],
           "activation": [], "xe": [], "activations": []}
    for h, t in zip(handles, targets):
        full = torch.as_tensor([ids], device=h.device)
        v, xe, per = score_ids(h, [t], full, span=(start, start + n), xe_span=(start, start + n),
                               per_span=(0, len(ids)))
        out["activation"].append(float(v[0, 0]))
        out["xe"].append(float(xe[0]))
        out["activations"].append(per[0, 0].tolist())
    return out


def _dream_all(handles, by_model, chosen: list[int], cfg: CompareConfig, sides, progress):
    """Dream the chosen targets under every model; fill each side's synthetic text."""
    group = cfg.dream_group or (fit_group(handles[0], by_model[0][chosen[0]], cfg.dream,
                                          len(chosen)) if chosen else 1)
    bar = tqdm(total=len(chosen) * len(handles), unit="dream", desc="dreaming",
               disable=not progress or not chosen)
    for m, h in enumerate(handles):
        for g in range(0, len(chosen), group):
            idx = chosen[g:g + group]
            for i, (res, err) in zip(idx, dream_group(h, [by_model[m][i] for i in idx], cfg.dream)):
                sides[i][m].dream_error = err
                sides[i][m].synthetic = _best_text(handles, [ts[i] for ts in by_model], res)
                bar.update(1)
    bar.close()


def _corpus_figures(sides: list) -> dict:
    a, b = sides[0].corpus, sides[1].corpus
    return {"overlap": top_overlap(a.top, b.top), "max_a": a.max, "max_b": b.max,
            "max_ratio": ratio(b.max, a.max), "density_a": a.density, "density_b": b.density,
            "density_change": b.density - a.density}


def _transfer(sides: list) -> dict:
    """Each model's best dreamed text read in the other model, as a share of its value in
    the model that dreamed it (1: the maximizer carries over; 0 or below: it no longer
    drives the target).  Dividing by the text's own value, not by the other model's best
    dream, keeps the figure free of how well either dream did."""
    sa, sb = sides[0].synthetic, sides[1].synthetic
    return {"a_in_b": ratio(sa["activation"][1], sa["activation"][0]) if sa else None,
            "b_in_a": ratio(sb["activation"][0], sb["activation"][1]) if sb else None}


def _score(c: TargetComparison, corr, th: DriftThresholds) -> None:
    tr = c.figures.get("transfer") or {}
    both = [v for v in (tr.get("a_in_b"), tr.get("b_in_a")) if v is not None]
    c.components = drift_components(corr, c.figures["overlap"], min(both) if len(both) == 2 else None)
    c.drift = drift_score(c.components)
    c.verdict, c.reason = verdict(corr, c.figures["max_a"], c.figures["max_b"], c.drift, th)


def compare(handle, targets: list, config: CompareConfig | None = None, *, against=None,
            progress: bool = True) -> CompareResult:
    """Compare ``targets`` between ``handle`` (A) and ``against`` (B), and/or measure their
    relevance to ``config.task_corpus``; see the module docstring."""
    cfg = (config or CompareConfig()).check()
    handles = [handle] + ([against] if against is not None else [])
    if against is None and not cfg.task_corpus:
        raise FeatvizError("nothing to compare: give a second model (--against B) or a task "
                           "corpus (--task-corpus T)")
    if not targets:
        raise FeatvizError("no targets given; pass e.g. --targets mlp:6:0-63")
    if against is not None:
        check_comparable(handle, against)
    by_model = parse_for_each(handles, list(targets))
    general, _ = mine_joint_cached(handles, by_model, cfg.corpus, cfg.mine,
                                   cache_dir=cfg.cache_dir, progress=progress)
    task = None
    if cfg.task_corpus:
        task, _ = mine_joint_cached(handles, by_model, cfg.task_corpus, cfg.mine,
                                    cache_dir=cfg.cache_dir, progress=progress)
    sides = []
    for i, j in enumerate(general):
        row = []
        for m, h in enumerate(handles):
            s = Side(h.name, j.records[m])
            if task is not None:
                s.task = task[i].records[m]
                s.relevance = effect_size(task[i].window_max[m], j.window_max[m])
            row.append(s)
        sides.append(row)
    comps = [TargetComparison(str(t), t.describe(handle), sides[i])
             for i, t in enumerate(by_model[0])]
    two = against is not None
    for i, c in enumerate(comps):
        if two:
            c.figures = _corpus_figures(c.sides)
            c.figures["corr"] = general[i].corr
            _score(c, general[i].corr, cfg.thresholds)
    key = (lambda c: _neg(c.drift)) if two else (lambda c: _neg(c.sides[0].relevance["g"]))
    if cfg.dream is not None:
        ranked = sorted(range(len(comps)), key=lambda i: key(comps[i]))
        _dream_all(handles, by_model, sorted(ranked[:cfg.dream_top or len(comps)]), cfg, sides,
                   progress)
        for i, c in enumerate(comps):
            if two:
                c.figures["transfer"] = _transfer(c.sides)
                _score(c, general[i].corr, cfg.thresholds)
    return CompareResult(
        models=[{**h.describe(), "fingerprint": model_fingerprint(h)} for h in handles],
        corpus=cfg.corpus or "wiki", task_corpus=cfg.task_corpus, settings=cfg.settings(),
        ranked_by="drift" if two else "relevance", targets=sorted(comps, key=key), handle=handle)


def _neg(v) -> float:
    """Sort key: highest first, missing values last."""
    return -v if v is not None and v == v else float("inf")

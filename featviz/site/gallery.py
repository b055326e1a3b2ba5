"""Galleries: mine exemplars for many targets, dream for each, write a static site.

    result = build_gallery(handle, targets, GalleryConfig(), out_dir="galleries/demo")

Layout of the output folder (schema: docs/gallery_schema.md)::

    index.html             one sortable row per target
    gallery.json           manifest: schema version, model, corpus, settings, targets
    gallery.jsonl          every target record, one per line
    targets/<slug>.json    one target record
    targets/<slug>.html    one target page

Targets are written one by one with atomic writes; re-running the same command skips
targets whose record already exists with the same settings (resumption).
"""
from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace

from tqdm.auto import tqdm

from featviz.analysis.flags import Thresholds, quick_flags
from featviz.errors import FeatvizError
from featviz.fileio import dump_json, read_json, write_atomic
from featviz.mining.cache import corpus_identity, mine_cached, model_fingerprint, slug
from featviz.mining.miner import MineConfig
from featviz.mining.records import TargetExemplars
from featviz.mining.reference import corpus_reference
from featviz.search.api import dream_group
from featviz.search.budget import fit_group
from featviz.search.config import DreamConfig
from featviz.search.result import DreamResult
from featviz.site.cluster import RayRunner
from featviz.site.pages import index_page, target_page
from featviz.site.runs import (
    is_stale_temp,
    parse_shard,
    plan_text,
    read_runs,
    record_run,
    shard_of,
    summarise_runs,
)
from featviz.targets.core import Target, input_files
from featviz.targets.effects import logit_effect
from featviz.targets.read import read_ids

SCHEMA_VERSION = 1


@dataclass
class GalleryConfig:
    mine: MineConfig = field(default_factory=lambda: MineConfig(max_tokens=20_000))
    dream: DreamConfig | None = field(default_factory=lambda: DreamConfig(budget_seconds=20.0))
    corpus: str | None = None
    logit_k: int = 10
    cache_dir: str | None = None        # None: ~/.cache/featviz/mining; "": no cache
    thresholds: Thresholds = field(default_factory=Thresholds)
    title: str = "featviz gallery"
    dream_group: int | None = None      # targets dreamt in one batch (dream_many); None: 1
                                        # on a CPU (where it does not pay), on a GPU as many as
                                        # fit in memory (search.budget.fit_group)
    shard: tuple | str | None = None    # (i, N) or "i/N": compute every N-th target from the
                                        # i-th only (job arrays writing into one folder)
    ray: str | None = None              # None: this process; "auto": a local Ray cluster;
                                        # HOST:PORT: a running one (site.cluster)
    ray_workers: int | None = None      # actors (None: one per GPU, else one per CPU)

    def check(self) -> "GalleryConfig":
        if self.dream_group is not None and (not isinstance(self.dream_group, int)
                                             or self.dream_group < 1):
            raise FeatvizError(f"--dream-group must be at least 1, got {self.dream_group}")
        self.shard = parse_shard(self.shard)
        if self.ray_workers is not None and (not isinstance(self.ray_workers, int)
                                             or self.ray_workers < 1):
            raise FeatvizError(f"--ray-workers must be at least 1, got {self.ray_workers}")
        self.mine.check()
        if self.dream is not None:
            self.dream.check()
        return self

    def settings(self) -> dict:
        d = {"mine": self.mine.key(), "logit_k": self.logit_k,
             "thresholds": asdict(self.thresholds)}
        if self.dream is not None:
            dc = self.dream.flat()
            if self.dream_group and self.dream_group > 1:
                d["dream_group"] = self.dream_group
            dc.pop("corpus_init", None)
            d["dream"] = dc
        return d


@dataclass
class GalleryResult:
    out_dir: str
    index: str
    done: list          # targets computed in this run
    skipped: list       # targets already finished by an earlier run
    failed: list        # targets whose record has a status other than ok
    pending: list = field(default_factory=list)   # targets with no record yet (other shards)


def peak_overlap(handle, synth_tokens: list, top: list) -> float | None:
    norm = lambda s: s.strip().lower()  # noqa: E731
    syn = {norm(t) for t in synth_tokens} - {""}     # Candidate.tokens: no BOS to skip
    peaks = [norm(handle.decode([e.token_ids[e.peak]])) for e in top]
    peaks = [p for p in peaks if p]
    if not syn or not peaks:
        return None
    return sum(p in syn for p in peaks) / len(peaks)


def _exemplar_json(handle, e) -> dict:
    d = e.to_json(handle)
    return {"tokens": d["tokens"], "activations": d["activations"], "value": d["value"],
            "peak": d["peak"], "window": d["window"], "token_ids": d["token_ids"]}


def _candidate_json(handle, target, c, prefix: list, suffix: list) -> dict:
    """A candidate with its per-token shading, read on the sequence that was scored: BOS,
    the fixed prefix, the optimised tokens, the fixed suffix (``fixed`` counts the tokens
    before and after the optimised ones, BOS included)."""
    ids = [handle.bos_id, *prefix, *c.token_ids, *suffix]
    r = read_ids(handle, [target], ids)
    return {"text": c.text, "tokens": r.tokens, "token_ids": r.token_ids,
            "activations": r.values[str(target)], "activation": c.activation, "xe": c.xe,
            "fixed": [1 + len(prefix), len(suffix)]}


def target_record(handle, target: Target, ex: TargetExemplars, res: DreamResult | None,
                  cfg: GalleryConfig, settings_key: str) -> dict:
    """Everything the gallery knows about one target (JSON-ready)."""
    syn = None
    best = fluent = None
    status, error = "ok", None
    if res is not None:
        fix = [handle.encode(res.config.get(k) or "") for k in ("prefix", "suffix")]
        syn = {"frontier": [_candidate_json(handle, target, c, *fix) for c in res.frontier],
               "best": res.best.to_json() if res.best else None,
               "best_fluent": res.best_fluent.to_json() if res.best_fluent else None,
               "xe_cap": res.config.get("xe_cap"),
               "evaluated": res.stats.get("evaluated")}
        best = res.best.activation if res.best else None
        fluent = res.best_fluent.activation if res.best_fluent else None
        if res.stats.get("diverged"):
            status, error = "diverged", "no finite activation was found while dreaming"
    if ex.nonfinite:
        status = "nonfinite"
        error = f"the target was NaN or Inf on {ex.nonfinite} corpus tokens"
    cmax = ex.max if math.isfinite(ex.max) else None
    ref = corpus_reference(ex, target, **res.shape) if res is not None else None
    ratio = lambda v: ref.ratio(v) if ref is not None else None  # noqa: E731
    synth_tokens = []
    if syn and (syn["best_fluent"] or syn["best"]):
        synth_tokens = (syn["best_fluent"] or syn["best"])["tokens"]
    st = ex.to_json(handle)
    rec = {
        "schema": "featviz.gallery.target", "version": SCHEMA_VERSION,
        "target": str(target), "description": target.describe(handle),
        "sae": target.saes() or None,
        "model": handle.name, "settings_key": settings_key, "status": status, "error": error,
        "stats": {k: st[k] for k in ("max", "min", "mean", "std", "n_windows", "n_tokens", "density",
                                     "density_threshold", "nonfinite", "quantiles", "histogram")},
        # field names follow OpenAI's NeuronRecord so a converter is a few lines
        "most_positive_activation_records": [_exemplar_json(handle, e) for e in ex.top],
        "most_negative_activation_records": [_exemplar_json(handle, e) for e in ex.bottom],
        "random_sample": [_exemplar_json(handle, e) for e in ex.controls],
        "bands": [{"lo": b.lo, "hi": b.hi, "count": b.count,
                   "samples": [_exemplar_json(handle, e) for e in b.samples]} for b in ex.bands],
        "synthetic": syn,
        "logit_effect": logit_effect(handle, target, cfg.logit_k),
        "validation": {"corpus_reference": ref.to_json() if ref is not None else None,
                       "ratio_fluent": ratio(fluent), "ratio_best": ratio(best),
                       "xe_best_fluent": res.best_fluent.xe if res and res.best_fluent else None,
                       "peak_overlap": peak_overlap(handle, synth_tokens, ex.top)},
    }
    rec["flags"] = quick_flags(corpus_max=cmax, density=ex.density, best=best, fluent=fluent,
                               nonfinite=ex.nonfinite, th=cfg.thresholds,
                               reference=ref.value if ref is not None else None)
    if status == "diverged":
        rec["flags"].append("diverged")
    return rec


def _summary(rec: dict, order: int) -> dict:
    syn = rec.get("synthetic") or {}
    bf, b = syn.get("best_fluent") or {}, syn.get("best") or {}
    return {"order": order, "target": rec["target"], "corpus_max": rec["stats"]["max"],
            "best_fluent": bf.get("activation"), "best": b.get("activation"),
            "ratio_fluent": (rec.get("validation") or {}).get("ratio_fluent"),
            "density": rec["stats"]["density"], "flags": rec.get("flags", []),
            "status": rec.get("status"), "best_fluent_text": bf.get("text")}


def _write_index(out_dir: str, title: str, meta: dict, names: list, records: dict) -> None:
    rows = []
    for i, n in enumerate(names):
        rec = records.get(n)
        s = _summary(rec, i) if rec is not None else \
            {"order": i, "target": n, "status": "pending", "flags": []}
        rows.append((s, f"targets/{slug(n)}.html"))
    write_atomic(os.path.join(out_dir, "index.html"), index_page(title, meta, rows))


def _write_jsonl(out_dir: str, recs: list) -> None:
    write_atomic(os.path.join(out_dir, "gallery.jsonl"),
                 "".join(dump_json(r, indent=None) + "\n" for r in recs))


def attach_audit(out_dir: str, audits: list) -> list[str]:
    """Embed audit results (``TargetAudit.to_json()`` dicts) into an existing gallery: the
    target records gain an ``audit`` field and its flags, pages and index are rewritten.
    Returns the targets that were found in the gallery."""
    man = read_json(os.path.join(out_dir, "gallery.json"))
    if man.get("schema") != "featviz.gallery":
        raise FeatvizError(f"'{out_dir}' is not a featviz gallery (no gallery manifest)")
    entries = {e["target"]: e for e in man["targets"]}
    found = []
    for a in audits:
        e = entries.get(a["target"])
        if e is None:
            continue
        path = os.path.join(out_dir, e["json"])
        rec = read_json(path, missing_ok=True)
        if rec is None:
            continue
        rec["audit"] = a
        rec["flags"] = [f for f in rec.get("flags", []) if not f.startswith("audit:")] + \
            [f"audit:{f}" for f in a.get("flags", [])]
        write_atomic(os.path.join(out_dir, e["html"]), target_page(rec))
        write_atomic(path, dump_json(rec))
        found.append(a["target"])
    recs = {t: read_json(os.path.join(out_dir, e["json"]), missing_ok=True) for t, e in entries.items()}
    rows = [(_summary(r, i) if r else {"order": i, "target": t, "status": "pending", "flags": []},
             entries[t]["html"]) for i, (t, r) in enumerate(recs.items())]
    write_atomic(os.path.join(out_dir, "index.html"),
                 index_page(man.get("title", "featviz gallery"), man.get("meta", {}), rows))
    if all(recs.values()):
        _write_jsonl(out_dir, list(recs.values()))
    return found


def build_gallery(handle, targets: list[Target], config: GalleryConfig | None = None, *,
                  out_dir: str, progress: bool = True) -> GalleryResult:
    """Mine every target in one pass, dream for each, and write the static site to
    ``out_dir`` (resuming: targets already written with the same settings are kept).
    With ``config.shard = (i, N)`` only shard i's targets are computed; the shards of one
    gallery share its folder, and the last to finish (or ``merge_gallery``) writes the
    index and ``gallery.jsonl`` of the whole gallery."""
    cfg = _prepare(handle, config, targets, out_dir)
    names = [str(t) for t in targets]
    for stale in glob.glob(os.path.join(glob.escape(out_dir), "**", "*.tmp*"), recursive=True):
        if is_stale_temp(stale):
            os.unlink(stale)                                # left by a killed run
    settings_key, meta = _write_manifest(handle, cfg, out_dir, names, input_files(targets))
    records = _finished(out_dir, names, settings_key)
    mine_set = shard_of(targets, cfg.shard)
    todo = [t for t in mine_set if str(t) not in records]
    if progress:
        tqdm.write(plan_text(total=len(names), mine=len(mine_set), todo=len(todo),
                             group=cfg.dream_group, device=str(handle.device) + (
                                 f" x {cfg.ray_workers or 'all'} Ray workers" if cfg.ray else ""),
                             budget=cfg.dream.budget_seconds if cfg.dream else 0.0,
                             shard=cfg.shard))
    _write_index(out_dir, cfg.title, meta, names, records)
    t0 = time.perf_counter()
    done = _compute(handle, todo, cfg, settings_key, meta, names, records, out_dir, progress)
    if done:
        wall = time.perf_counter() - t0
        record_run(out_dir, {"shard": "%d/%d" % cfg.shard if cfg.shard else None,
                             "device": str(handle.device), "wall_seconds": wall,
                             "targets_computed": len(done),
                             "targets_per_hour": len(done) / wall * 3600 if wall > 0 else None})
    res = finish_gallery(out_dir, settings_key)
    res.done = done
    res.skipped = [str(t) for t in mine_set if str(t) not in done]
    return res


def _prepare(handle, config, targets, out_dir) -> GalleryConfig:
    cfg = (config or GalleryConfig()).check()
    if not targets:
        raise FeatvizError("no targets given; pass e.g. --targets mlp:6:0-7")
    if cfg.dream_group is None:
        cfg = replace(cfg, dream_group=1 if cfg.dream is None else
                      fit_group(handle, targets[0], cfg.dream, len(targets)))
    names = [str(t) for t in targets]
    if len(set(names)) != len(names):
        raise FeatvizError("the same target is listed twice; list each target once")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FeatvizError(f"--out '{out_dir}' exists and is not a folder; pick another path")
    os.makedirs(os.path.join(out_dir, "targets"), exist_ok=True)
    return cfg


def _finished(out_dir: str, names: list, settings_key: str) -> dict:
    """The target records already written with these settings (by any run or shard)."""
    records = {}
    for n in names:
        rec = read_json(os.path.join(out_dir, "targets", slug(n) + ".json"), missing_ok=True,
                        corrupt_ok=True)
        if rec and rec.get("settings_key") == settings_key and rec.get("target") == n:
            records[n] = rec
    return records


def _compute(handle, todo, cfg, settings_key, meta, names, records, out_dir, progress) -> list:
    """Mine and dream ``todo`` (here, or on Ray workers), writing each target as its group
    finishes.  One bar for the whole run: targets done, targets per hour, the ETA, and
    the current stage."""
    if not todo:
        return []
    bar = tqdm(total=len(todo), unit="target", desc="gallery [mining]", disable=not progress)
    t0 = time.perf_counter()
    runner = RayRunner(handle, cfg.ray, cfg.ray_workers) if cfg.ray is not None else None
    try:
        mined = mine_cached(handle, todo, cfg.corpus, cfg.mine, cache_dir=cfg.cache_dir,
                            progress=progress, mine_with=runner and (
                                lambda ts: runner.mine(ts, cfg.mine, cfg.corpus)))[0]
        bar.set_description("gallery [dreaming]" if cfg.dream else "gallery [writing]")
        ex_of = dict(zip(map(str, todo), mined))
        groups = [todo[g:g + cfg.dream_group] for g in range(0, len(todo), cfg.dream_group)]
        if runner is None or cfg.dream is None:
            results = ((i, dream_group(handle, grp, cfg.dream)) for i, grp in enumerate(groups))
        else:
            results = runner.dream(groups, cfg.dream)
        done, t1 = [], time.perf_counter()
        for gi, outcomes in results:
            each, t1 = (time.perf_counter() - t1) / len(groups[gi]), time.perf_counter()
            for t, (res, err) in zip(groups[gi], outcomes):
                records[str(t)] = _write_target(handle, t, ex_of[str(t)], res, err, each, cfg,
                                                settings_key, os.path.join(out_dir, "targets"))
                done.append(str(t))
                _write_index(out_dir, cfg.title, meta, names, records)
                bar.update(1)
                bar.set_postfix_str(f"{len(done) / (time.perf_counter() - t0) * 3600:.0f} "
                                    "targets/h")
    finally:
        if runner is not None:
            runner.close()
        bar.close()
    return done


def finish_gallery(out_dir: str, settings_key: str | None = None) -> GalleryResult:
    """Write the index, ``gallery.jsonl`` (once every target has its record) and the
    manifest's run summary from the records on disk: what the last shard does, and what
    ``featviz gallery --merge DIR`` does."""
    man = read_json(os.path.join(out_dir, "gallery.json"), missing_ok=True)
    if not isinstance(man, dict) or man.get("schema") != "featviz.gallery":
        raise FeatvizError(f"'{out_dir}' is not a featviz gallery (no gallery.json manifest); "
                           "pass the folder a gallery run wrote")
    names = [e["target"] for e in man["targets"]]
    records = _finished(out_dir, names, settings_key or man["settings_key"])
    _write_index(out_dir, man.get("title", "featviz gallery"), man.get("meta", {}), names, records)
    pending = [n for n in names if n not in records]
    if not pending:
        _write_jsonl(out_dir, [records[n] for n in names])
    man["runs"] = summarise_runs(read_runs(out_dir))
    write_atomic(os.path.join(out_dir, "gallery.json"), dump_json(man))
    return GalleryResult(out_dir=out_dir, index=os.path.join(out_dir, "index.html"), done=[],
                         skipped=[n for n in names if n in records], pending=pending,
                         failed=[n for n in names if n in records
                                 and records[n].get("status") != "ok"])


def _write_manifest(handle, cfg: GalleryConfig, out_dir: str, names: list,
                    files: list | None = None) -> tuple[str, dict]:
    """Write gallery.json; returns (the settings key that names these results, the index's
    meta lines).  The key covers the model's weights, the corpus, every setting and the
    schema version, so results computed otherwise are recomputed, never mixed."""
    settings = cfg.settings()
    key_doc = {"model": model_fingerprint(handle), "corpus": corpus_identity(cfg.corpus),
               "settings": settings, "schema": SCHEMA_VERSION}
    if files:                      # direction files and SAEs the targets read (input_files)
        key_doc["files"] = files
    settings_key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:16]
    meta = {"model": handle.name, "corpus": cfg.corpus or "wiki",
            "tokens mined": cfg.mine.max_tokens, "targets": len(names),
            "dream budget (s)": cfg.dream.budget_seconds if cfg.dream else "off"}
    manifest = {"schema": "featviz.gallery", "version": SCHEMA_VERSION, "title": cfg.title,
                "meta": meta,
                "model": handle.describe(), "model_fingerprint": key_doc["model"],
                "corpus": key_doc["corpus"], "settings": settings, "settings_key": settings_key,
                "targets": [{"target": n, "json": f"targets/{slug(n)}.json",
                             "html": f"targets/{slug(n)}.html"} for n in names]}
    write_atomic(os.path.join(out_dir, "gallery.json"), dump_json(manifest))
    return settings_key, meta


def _write_target(handle, t, ex, res, err, seconds, cfg, settings_key, tdir) -> dict:
    """One target's record and page, written atomically; returns the record."""
    rec = target_record(handle, t, ex, res, cfg, settings_key)
    if err:
        rec["status"], rec["error"] = "error", err
        rec["flags"].append("error")
    rec["timing"] = {"seconds": seconds}
    s = slug(str(t))
    write_atomic(os.path.join(tdir, s + ".html"), target_page(rec))
    write_atomic(os.path.join(tdir, s + ".json"), dump_json(rec))
    return rec

"""A finished gallery in the formats the field's tools read.

* ``neuronpedia``: Neuronpedia's import layout, ``{model}/{source_id}/`` with
  ``release.jsonl``, ``model.jsonl``, ``sourceset.jsonl``, ``source.jsonl``,
  ``features/batch-N.jsonl.gz`` and ``activations/batch-N.jsonl.gz``; ``source_id`` is
  ``{layer}-{set}``.
* ``neuron-records``: OpenAI neuron-explainer ``NeuronRecord`` JSON, ``{layer}/{index}.json``.
  ``quantile_boundaries`` are activation quantiles (0.5, 0.9, 0.99, 0.999 of every mined
  token's value, from the histogram); ``random_sample_by_quantile[j]`` holds the kept
  windows whose max lies between boundaries j - 1 and j.
* ``dashboard``: the feature-dashboard JSON of Neuronpedia's graph viewer, one file per
  target (``index``, ``examples_quantiles``, ``top_logits``, ``bottom_logits``, ``act_min``,
  ``act_max``, ``histogram``, ``activation_frequency``).

Every exported unit is one atom with an index (a neuron, head, dimension or SAE feature);
sums and attention probabilities are skipped, and the summary says so.  Exemplars drop
the BOS token.  Nothing is written into an existing non-empty folder.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone

from featviz.errors import FeatvizError
from featviz.fileio import clean, read_json
from featviz.mining.cache import slug
from featviz.targets.core import Atom
from featviz.targets.spec import parse_target

FORMATS = ("neuronpedia", "neuron-records", "dashboard")
QUANTILES = ("0.5", "0.9", "0.99", "0.999")     # the record's stats.quantiles, in order


@dataclass
class ExportSummary:
    format: str
    out: str
    units: int = 0
    files: int = 0
    skipped: list = field(default_factory=list)   # [target, why]

    def line(self) -> str:
        s = f"{self.format}: {self.units} units in {self.files} files under {self.out}"
        return s + (f"; {len(self.skipped)} targets skipped (e.g. {self.skipped[0][0]}: "
                    f"{self.skipped[0][1]})" if self.skipped else "")


def load_gallery(folder: str) -> tuple[dict, list[dict]]:
    """(manifest, finished target records in the gallery's order); one-line errors."""
    man_path = os.path.join(folder, "gallery.json")
    if not os.path.isfile(man_path):
        raise FeatvizError(f"'{folder}' holds no gallery.json; pass a folder written by "
                           "featviz gallery")
    man = read_json(man_path)
    if man.get("schema") != "featviz.gallery":
        raise FeatvizError(f"'{man_path}' is not a featviz gallery manifest")
    recs = []
    for entry in man.get("targets", []):
        rec = read_json(os.path.join(folder, entry["json"]), missing_ok=True, corrupt_ok=True)
        if rec is not None and rec.get("target") == entry["target"]:
            recs.append(rec)
    if not recs:
        raise FeatvizError(f"the gallery in '{folder}' has no finished targets to export")
    return man, recs


@dataclass(frozen=True)
class Unit:
    """Where a target sits in the field's coordinates."""

    layer: int
    index: int
    set_name: str           # what kind of unit: mlp, resid, head, sae-<name>, ...
    hook: str               # the TransformerLens hook it reads


def unit_of(target: str) -> Unit | str:
    """The target's unit, or why it has none."""
    try:
        t = parse_target(target)
    except FeatvizError as e:
        return f"cannot read the target name ({e})"
    if not isinstance(t, Atom):
        return "a sum of targets has no single index in these formats"
    if t.key is not None:
        return "an attention probability or score has no single index in these formats"
    if t.file is not None and t.kind != "sae":
        return "a direction file has no index in these formats"
    if t.kind == "sae":
        spec = t.sae_spec
        name = re.sub(r"[^a-z0-9]+", "-", os.path.basename(os.path.normpath(
            spec.path if not spec.path.endswith(".npz") else os.path.dirname(spec.path))).lower())
        return Unit(t.layer, t.index, f"sae-{name.strip('-') or 'sae'}", spec.hook)
    hook = t.site[0] if t.layer < 0 else f"blocks.{t.layer}.{t.site[0]}"
    if t.dim is not None:                     # q/k/v/z: one set per head, indexed by dimension
        return Unit(t.layer, t.dim, f"{t.kind}-h{t.index}", hook)
    return Unit(t.layer, t.index, t.kind.replace("_", "-"), hook)


def _strip(e: dict) -> tuple[list, list]:
    """An exemplar's tokens and values without BOS."""
    return list(e["tokens"][1:]), [float(v) for v in e["activations"][1:]]


def _windows(rec: dict) -> list[dict]:
    """Every exemplar a record keeps, each window once: random controls and band samples
    (random draws) first, then the top windows."""
    seen, out = set(), []
    for e in (rec.get("random_sample", []) + [s for b in rec.get("bands", []) for s in b["samples"]]
              + rec.get("most_positive_activation_records", [])):
        if e["window"] not in seen:
            seen.add(e["window"])
            out.append(e)
    return out


def quantile_samples(rec: dict, per_bin: int = 20) -> tuple[list[float], list[list[dict]]]:
    """(quantile_boundaries, random_sample_by_quantile) as neuron-explainer means them: the
    boundaries are the 0.5, 0.9, 0.99 and 0.999 quantiles of every mined token's value
    (exact to one histogram bin); bin j holds the kept windows whose max lies in
    [boundary j-1, boundary j) (bin 0 below the first, bin 4 from the last up)."""
    q = rec["stats"].get("quantiles") or {}
    bounds = [q.get(k) for k in QUANTILES]
    if any(b is None for b in bounds):
        return [], []
    bins: list[list[dict]] = [[] for _ in range(len(bounds) + 1)]
    for e in _windows(rec):
        j = sum(e["value"] >= b for b in bounds)
        if len(bins[j]) < per_bin:
            bins[j].append(e)
    return [float(b) for b in bounds], bins


def _activation_record(e: dict) -> dict:
    tokens, values = _strip(e)
    return {"dataclass_name": "ActivationRecord", "tokens": tokens, "activations": values}


def neuron_record(rec: dict, unit: Unit) -> dict:
    """One OpenAI neuron-explainer NeuronRecord (its fast_dataclasses JSON)."""
    st = rec["stats"]
    bounds, bins = quantile_samples(rec)
    std = st.get("std")
    return clean({
        "dataclass_name": "NeuronRecord",
        "neuron_id": {"dataclass_name": "NeuronId", "layer_index": unit.layer,
                      "neuron_index": unit.index},
        "random_sample": [_activation_record(e) for e in rec.get("random_sample", [])],
        "random_sample_by_quantile": [[_activation_record(e) for e in b] for b in bins] or None,
        "quantile_boundaries": bounds or None,
        "mean": st.get("mean"), "variance": None if std is None else std * std,
        "skewness": None, "kurtosis": None,
        "most_positive_activation_records": [_activation_record(e) for e in
                                             rec.get("most_positive_activation_records", [])],
        "most_negative_activation_records": [_activation_record(e) for e in
                                             rec.get("most_negative_activation_records", [])],
    })


def dashboard(rec: dict, unit: Unit) -> dict:
    """The feature-dashboard JSON (examples by activation quantile, top and bottom logits,
    range, histogram, firing frequency)."""
    bounds, bins = quantile_samples(rec)
    names = ["below the median"] + [f"quantile {a}-{b}" for a, b in zip(QUANTILES, QUANTILES[1:])] \
        + [f"above quantile {QUANTILES[-1]}"]

    def example(e):
        tokens, values = _strip(e)
        return {"tokens": tokens, "tokens_acts_list": values,
                "train_token_ind": max(e["peak"] - 1, 0), "is_repeated_datapoint": False}
    quantiles = [{"quantile_name": "Top activations",
                  "examples": [example(e) for e in rec.get("most_positive_activation_records", [])]}]
    quantiles += [{"quantile_name": n, "examples": [example(e) for e in b]}
                  for n, b in reversed(list(zip(names, bins))) if b]
    if rec.get("most_negative_activation_records"):
        quantiles.append({"quantile_name": "Most negative",
                          "examples": [example(e) for e in rec["most_negative_activation_records"]]})
    le = rec.get("logit_effect") or {}
    st = rec["stats"]
    hist = st.get("histogram") or {}
    return clean({"index": unit.index, "layer": unit.layer, "hook": unit.hook,
                  "target": rec["target"], "examples_quantiles": quantiles,
                  "top_logits": [t for t, _ in le.get("top", [])],
                  "bottom_logits": [t for t, _ in le.get("bottom", [])],
                  "act_min": st.get("min"), "act_max": st.get("max"),
                  "histogram": {"edges": hist.get("edges", []), "counts": hist.get("counts", [])},
                  "activation_frequency": st.get("density"), "quantile_boundaries": bounds})


def _id(*parts) -> str:
    """A stable 25-character id (Neuronpedia's cuid length) from the parts."""
    return "c" + hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:24]


def _jsonl(path: str, rows: list, gz: bool = False) -> None:
    text = "".join(json.dumps(clean(r), ensure_ascii=False, allow_nan=False) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8", compresslevel=5) as f:
            f.write(text)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def _neuronpedia(man: dict, units: list, out: str, s: ExportSummary, *, model_id: str,
                 set_suffix: str, creator: str, batch_size: int) -> None:
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    groups: dict = {}
    for rec, u in units:
        groups.setdefault((u.layer, f"{u.set_name}-{set_suffix}" if set_suffix else u.set_name),
                          []).append((rec, u))
    for (layer, set_name), members in sorted(groups.items()):
        source_id = f"{layer}-{set_name}"
        d = os.path.join(out, model_id, source_id)
        os.makedirs(os.path.join(d, "features"))
        os.makedirs(os.path.join(d, "activations"))
        who = {"creatorId": "featviz", "createdAt": created}
        _jsonl(os.path.join(d, "release.jsonl"), [{
            "name": set_suffix or "featviz", "description": man.get("title") or "featviz gallery",
            "descriptionShort": man.get("title") or "featviz gallery", "urls": [],
            "creatorNameShort": creator, "creatorName": creator, **who}])
        _jsonl(os.path.join(d, "model.jsonl"), [{
            "id": model_id, "instruct": "instruct" in model_id, "displayNameShort": model_id,
            "displayName": man.get("model", {}).get("name", model_id), "updatedAt": created, **who}])
        _jsonl(os.path.join(d, "sourceset.jsonl"), [{
            "modelId": model_id, "name": set_name, "creatorName": creator,
            "releaseName": set_suffix or "featviz", "visibility": "PUBLIC",
            "description": f"featviz {set_name} ({members[0][1].hook.split('.', 2)[-1]})", **who}])
        _jsonl(os.path.join(d, "source.jsonl"), [{
            "id": source_id, "modelId": model_id, "setName": set_name, "visibility": "PUBLIC",
            "hookName": members[0][1].hook, "dataset": json.dumps(man.get("corpus")),
            "num_prompts": None, "num_tokens_in_prompt": None, "creatorId": "featviz"}])
        s.files += 4
        for b in range(0, len(members), batch_size):
            feats, acts = [], []
            for rec, u in members[b:b + batch_size]:
                st, le = rec["stats"], rec.get("logit_effect") or {}
                hist = st.get("histogram") or {}
                edges, counts = hist.get("edges", []), hist.get("counts", [])
                feats.append({
                    "modelId": model_id, "layer": source_id, "index": u.index,
                    "maxActApprox": st.get("max"), "hasVector": False, "vector": [],
                    "vectorLabel": None, "hookName": u.hook, "topkCosSimIndices": [],
                    "topkCosSimValues": [], "neuron_alignment_indices": [],
                    "neuron_alignment_values": [], "neuron_alignment_l1": [],
                    "correlated_neurons_indices": [], "correlated_neurons_pearson": [],
                    "correlated_neurons_l1": [], "correlated_features_indices": [],
                    "correlated_features_pearson": [], "correlated_features_l1": [],
                    "neg_str": [t for t, _ in le.get("bottom", [])],
                    "neg_values": [v for _, v in le.get("bottom", [])],
                    "pos_str": [t for t, _ in le.get("top", [])],
                    "pos_values": [v for _, v in le.get("top", [])],
                    "frac_nonzero": st.get("density"),
                    "freq_hist_data_bar_heights": counts,
                    "freq_hist_data_bar_values": [(a + c) / 2 for a, c in zip(edges, edges[1:])],
                    "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": [],
                    "decoder_weights_dist": [], **who})
                for j, e in enumerate(rec.get("most_positive_activation_records", [])
                                      + [x for band in rec.get("bands", []) for x in band["samples"]]):
                    tokens, values = _strip(e)
                    if not values:
                        continue
                    top = max(range(len(values)), key=values.__getitem__)
                    acts.append({
                        "id": _id(model_id, source_id, u.index, j), "tokens": tokens,
                        "modelId": model_id, "layer": source_id, "index": u.index,
                        "maxValue": values[top], "maxValueTokenIndex": top,
                        "minValue": min(values), "values": values, "dfaValues": [],
                        "dfaTargetIndex": None, "dfaMaxValue": None, "lossValues": [],
                        "logitContributions": None, "binMin": None, "binMax": None,
                        "binContains": None, "qualifyingTokenIndex": None, "dataIndex": None,
                        "dataSource": None, **who})
            n = b // batch_size
            _jsonl(os.path.join(d, "features", f"batch-{n}.jsonl.gz"), feats, gz=True)
            _jsonl(os.path.join(d, "activations", f"batch-{n}.jsonl.gz"), acts, gz=True)
            s.files += 2


def export(fmt: str, gallery: str, out: str, *, model_id: str | None = None,
           set_name: str = "", creator: str = "featviz", batch_size: int = 2048) -> ExportSummary:
    """Write ``gallery``'s finished targets to ``out`` (a new or empty folder) in ``fmt``."""
    if fmt not in FORMATS:
        raise FeatvizError(f"unknown export format '{fmt}'; use one of {', '.join(FORMATS)}")
    if batch_size < 1:
        raise FeatvizError(f"--batch-size must be at least 1, got {batch_size}")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise FeatvizError(f"'{out}' exists and is not an empty folder; pass a new folder "
                           "(an export never writes over earlier output)")
    man, recs = load_gallery(gallery)
    s = ExportSummary(fmt, out)
    units = []
    for rec in recs:
        u = unit_of(rec["target"])
        if isinstance(u, str):
            s.skipped.append([rec["target"], u])
        else:
            units.append((rec, u))
    if not units:
        raise FeatvizError(f"no target of '{gallery}' can be exported as {fmt}: "
                           f"{s.skipped[0][0]}: {s.skipped[0][1]}")
    model_id = model_id or re.sub(r"[^a-z0-9.]+", "-",
                                  str(man.get("model", {}).get("name", "model")).lower()).strip("-")
    tmp = out.rstrip("/\\") + f".tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        if fmt == "neuronpedia":
            _neuronpedia(man, units, tmp, s, model_id=model_id, set_suffix=set_name,
                         creator=creator, batch_size=batch_size)
        else:
            write = neuron_record if fmt == "neuron-records" else dashboard
            for rec, u in units:
                name = (os.path.join(str(u.layer), f"{u.index}.json") if fmt == "neuron-records"
                        else f"{slug(rec['target'])}.json")
                if fmt == "neuron-records" and u.set_name not in ("mlp",):
                    name = os.path.join(u.set_name, name)
                path = os.path.join(tmp, name)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(write(rec, u), f, ensure_ascii=False, allow_nan=False)
                s.files += 1
        s.units = len(units)
        if os.path.isdir(out):
            os.rmdir(out)                        # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return s

"""Defects found by reading the code (the trust issue): each test failed before its fix."""
import json

import numpy as np
import pytest
import torch
from conftest import word_corpus

import featviz
from featviz import FeatvizError
from featviz.cli.main import build_parser, main
from featviz.mining.miner import MineConfig, mine
from featviz.mining.reference import corpus_reference
from featviz.model.forward import run
from featviz.search.api import dream
from featviz.search.config import DreamConfig
from featviz.targets.core import all_sites

FAST = dict(length=5, batch=4, steps=4, swap_iters=3, children=6, k_grad=8, k_lm=8,
            hard_samples=2, caps=(5.0,), init_samples=8, beam_lams=())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return word_corpus(tmp_path_factory.mktemp("c") / "c.txt", 3, 40, 50)


# ---------------------------------------------------------------- presets keep their settings
@pytest.mark.parametrize("cmd,default", [("gallery", 20.0), ("audit", 30.0)])
def test_presets_keep_budget_and_seed(tmp_path, cmd, default):
    from featviz.cli.common import budget_dream_config
    p = tmp_path / "p.yaml"
    p.write_text("budget_seconds: 37\nseed: 5\nlength: 9\n")
    flag = "--targets" if cmd == "gallery" else "--target"
    parse = lambda *a: build_parser().parse_args([cmd, flag, "mlp:0:0", *a])  # noqa: E731
    d = budget_dream_config(parse("--config", str(p)))
    assert (d.budget_seconds, d.seed, d.length) == (37, 5, 9)
    d = budget_dream_config(parse("--config", str(p), "--budget-seconds", "12", "--seed", "2"))
    assert (d.budget_seconds, d.seed) == (12, 2)                 # flags the user gave win
    d = budget_dream_config(parse())
    assert (d.budget_seconds, d.seed) == (default, 0)            # no preset: the defaults
    d = budget_dream_config(parse("--config", "configs/default.yaml"))
    assert d.budget_seconds == 90


# ---------------------------------------------------------------- peak-token overlap
def test_peak_overlap_counts_the_first_synthetic_token(llama):
    from featviz.mining.records import Exemplar
    from featviz.site.gallery import peak_overlap
    a, b = llama.encode(" cat")[0], llama.encode(" moon")[0]
    ex = [Exemplar(1.0, 1, 0, [llama.bos_id, a], [0.0, 1.0])]
    assert peak_overlap(llama, [llama.decode([a]), llama.decode([b])], ex) == 1.0
    assert peak_overlap(llama, [llama.decode([b]), llama.decode([b])], ex) == 0.0


# ---------------------------------------------------------------- rotate: 0 keeps the sweep
def test_rotate_zero_keeps_the_last_position_sweep(llama, monkeypatch):
    import featviz.search.lockstep as dm
    calls = []
    real = dm.sweep_last

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(dm, "sweep_last", counting)
    dream(llama, "mlp:1:3", DreamConfig(**{**FAST, "rotate": 0, "sweep": 8}), progress=False)
    assert calls, "rotate: 0 switched off the last-position sweep"


# ---------------------------------------------------------------- prefix / suffix
@pytest.mark.parametrize("spec", ["mlp:2:0@max", "head:1:1@mean"])
def test_max_and_mean_range_over_the_optimised_tokens_only(llama, spec):
    cfg = DreamConfig(prefix=" the cat", suffix=" sat", **FAST)
    res = dream(llama, spec, cfg, progress=False)
    t = featviz.parse_target(spec, llama)
    pre, suf = llama.encode(" the cat"), llama.encode(" sat")
    for c in res.frontier:
        full = torch.tensor([[llama.bos_id, *pre, *c.token_ids, *suf]])
        with torch.no_grad():
            per = t.per_position(run(llama, t.sites(), input_ids=full)[0], llama)[0]
        body = per[1 + len(pre): 1 + len(pre) + len(c.token_ids)]
        want = body.max() if spec.endswith("@max") else body.mean()
        assert c.activation == pytest.approx(float(want), abs=1e-5)


def test_gallery_shading_is_read_with_the_prefix(llama, corpus, tmp_path):
    from featviz.site.gallery import GalleryConfig, build_gallery
    cfg = GalleryConfig(mine=MineConfig(window=16, max_tokens=400, k=3, cells=8, per_band=1,
                                        controls=2, hist_bins=8, batch_size=8),
                        dream=DreamConfig(prefix=" the cat", **FAST), corpus=corpus, cache_dir="")
    t = featviz.parse_target("mlp:2:0", llama)
    build_gallery(llama, [t], cfg, out_dir=str(tmp_path / "g"), progress=False)
    rec = json.load(open(next((tmp_path / "g" / "targets").glob("*.json"))))
    n_pre = len(llama.encode(" the cat"))
    for c in rec["synthetic"]["frontier"]:
        assert c["fixed"] == [1 + n_pre, 0]
        assert c["token_ids"][1:1 + n_pre] == llama.encode(" the cat")
        # @last: the shading's last value is the reported activation
        assert c["activations"][-1] == pytest.approx(c["activation"], abs=1e-5)


# ---------------------------------------------------------------- like-for-like corpus figures
def test_miner_records_position_and_prefix_mean_maxima(tiny, corpus):
    from featviz.mining.corpus import windows
    targets = featviz.parse_targets("mlp:1:0-3", tiny) + [featviz.parse_target("attn:1:1:2", tiny)]
    cfg = MineConfig(window=10, max_tokens=600, k=3, batch_size=7, cells=8, hist_bins=8)
    res = mine(tiny, targets, cfg, source=corpus, progress=False)
    ws = np.stack([w.ids for w in windows(tiny, corpus, cfg.window, max_tokens=cfg.max_tokens)])
    with torch.no_grad():
        caps, _ = run(tiny, all_sites(targets), input_ids=torch.as_tensor(ws))
        per = torch.stack([t.per_position(caps, tiny) for t in targets]).double().numpy()
    for t, r in enumerate(res):
        np.testing.assert_allclose(r.position_max, per[t].max(0), rtol=1e-5, atol=1e-6)
        means = np.cumsum(per[t][:, 1:], 1) / np.arange(1, per.shape[2])
        np.testing.assert_allclose(r.prefix_mean_max[1:], means.max(0), rtol=1e-5, atol=1e-6)
        back = type(r).from_json(json.loads(json.dumps(r.to_json())))
        assert back.position_max == pytest.approx(r.position_max)


def test_corpus_reference_compares_like_with_like(llama, corpus):
    specs = ["mlp:1:2", "mlp:1:2@max", "mlp:1:2@mean", "mlp:1:2@3", "mlp:1:2@-2",
             "attn:1:1:2", "attn:1:1:-1"]
    ts = [featviz.parse_target(s, llama) for s in specs]
    ex = dict(zip(specs, mine(llama, ts, MineConfig(window=10, max_tokens=600), source=corpus,
                              progress=False)))
    ref = lambda s, **k: corpus_reference(ex[s], featviz.parse_target(s), **{"length": 5, **k})  # noqa: E731
    for s in ("mlp:1:2", "mlp:1:2@max"):
        assert ref(s).value == ex[s].max
    assert ref("mlp:1:2@mean").value == pytest.approx(ex["mlp:1:2@mean"].prefix_mean_max[5])
    assert ref("mlp:1:2@mean").value < ex["mlp:1:2@mean"].max      # unlike the token max
    assert ref("mlp:1:2@3").value == pytest.approx(ex["mlp:1:2@3"].position_max[3])
    assert ref("mlp:1:2@-2").value == pytest.approx(ex["mlp:1:2@-2"].position_max[4])  # of 6
    assert ref("attn:1:1:2").value == pytest.approx(ex["attn:1:1:2"].position_max[5])
    for s, k in (("attn:1:1:-1", {}), ("mlp:1:2@mean", {"prefix": 2}), ("mlp:1:2@3", {"suffix": 1}),
                 ("mlp:1:2@mean", {"length": 11})):
        r = ref(s, **k)
        assert r.value is None and r.basis and r.ratio(3.0) is None, (s, k)
    assert ref("mlp:1:2", prefix=2).value == ex["mlp:1:2"].max


def test_query_divides_by_the_like_for_like_figure(llama, tmp_path, corpus):
    from featviz.analysis.query import QueryConfig, query
    q = query(llama, "mlp:1:2@mean", QueryConfig(dream=DreamConfig(**FAST), corpus=corpus,
                                                  corpus_tokens=300, window=10),
              progress=False)
    want = q.exemplars.prefix_mean_max[5]
    assert q.reference.value == pytest.approx(want)
    assert q.ratio_best == pytest.approx(q.dream.best.activation / want)
    doc = q.to_json()
    assert doc["corpus_reference"]["value"] == pytest.approx(want)
    q = query(llama, "mlp:1:2@mean", QueryConfig(dream=DreamConfig(prefix=" the", **FAST),
                                                  corpus=corpus, corpus_tokens=300, window=10),
              progress=False)
    assert q.ratio_best is None and q.reference.value is None and "prefix" in q.reference.basis


# ---------------------------------------------------------------- robustness benchmark
def test_dream_robustness_reports_signed_shares(llama):
    from benchmarks.dream_robustness import robustness
    from featviz.model.vocab import readable_mask
    t = featviz.parse_target("mlp:2:5", llama)
    # some text with a positive activation that is not a local maximum of the neuron
    for text in ("the cat sat on the mat", "rivers flow into the sea", "music and art fill"):
        r = robustness(llama, t, text, 8, readable_mask(llama))
        if r["activation"] > 0 and r["positions_raised"]:
            break
    assert r["positions_raised"] > 0 and r["min_share"] < 0
    assert r["min_share"] == min(r["shares"])


# ---------------------------------------------------------------- --device
def test_device_choice(llama):
    from featviz.model.loading import resolve_device
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(FeatvizError, match="unknown device"):
        resolve_device("gpu7")
    if not torch.cuda.is_available():
        with pytest.raises(FeatvizError, match="no CUDA GPU"):
            resolve_device("cuda:1")
    d = llama.describe()
    assert d["device"] == "cpu" and "weights" in d


@pytest.mark.parametrize("device,msg", [("tpu", "unknown device"), ("cuda:9", "cuda")])
def test_device_errors_are_one_line(capsys, device, msg):
    if device.startswith("cuda") and torch.cuda.device_count() > 9:
        pytest.skip("this machine has ten GPUs")
    rc = main(["activations", "--target", "mlp:0:0", "--device", device, "hello"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and msg in err and "Traceback" not in err


def test_jax_backend_says_when_it_cannot_follow_the_device(llama):
    import dataclasses

    from featviz.backends.jax.forward import use_device

    class Meta:
        device = torch.device("mps")
    with pytest.raises(FeatvizError, match="--backend torch"):
        use_device(Meta())
    assert use_device(llama).platform == "cpu"
    del dataclasses

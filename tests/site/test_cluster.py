"""Galleries on a local Ray cluster: the same JSON as one process, and a worker killed
mid-gallery costs nothing.  Ray's local start takes seconds: the tests are few and small."""
import glob
import json
import os
import threading
import time

import pytest

import featviz
from featviz.cli.main import main
from featviz.mining.miner import MineConfig
from featviz.search.config import DreamConfig
from featviz.site.gallery import GalleryConfig, build_gallery

ray = pytest.importorskip("ray", reason="needs the ray extra (pip install 'featviz[ray]')")

FAST = dict(length=4, batch=4, steps=3, swap_iters=2, children=6, k_grad=8, k_lm=8,
            hard_samples=2, caps=(5.0,), init_samples=8, beam_lams=())


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(model_dir, tmp_path_factory):
    from conftest import word_corpus
    corpus = word_corpus(tmp_path_factory.mktemp("ray-corpus") / "c.txt", 4, 40, 30)
    handle = featviz.load_model(model_dir, device="cpu")
    targets = featviz.parse_targets("mlp:1:0-5", handle)
    return handle, targets, corpus


def cfg(corpus, **kw):
    return GalleryConfig(mine=MineConfig(window=16, max_tokens=1200, k=4, cells=8, per_band=2,
                                         controls=3, hist_bins=16, batch_size=4),
                         dream=DreamConfig(**FAST), corpus=corpus, cache_dir="", **kw)


def comparable(out):
    docs = {}
    for f in sorted(glob.glob(f"{out}/targets/*.json")):
        d = json.load(open(f))
        d.pop("timing")
        docs[os.path.basename(f)] = d
    man = json.load(open(f"{out}/gallery.json"))
    man.pop("runs")
    docs["gallery.json"] = man
    return docs


def test_two_ray_workers_give_the_single_process_gallery(cluster, setup, tmp_path):
    handle, targets, corpus = setup
    one = str(tmp_path / "one")
    build_gallery(handle, targets, cfg(corpus), out_dir=one, progress=False)
    two = str(tmp_path / "ray")
    res = build_gallery(handle, targets, cfg(corpus, ray="auto", ray_workers=2), out_dir=two,
                        progress=False)
    assert sorted(res.done) == sorted(str(t) for t in targets) and not res.pending
    assert comparable(two) == comparable(one)
    assert open(f"{two}/gallery.jsonl").read().count("\n") == len(targets)


def test_a_killed_worker_costs_nothing(cluster, setup, tmp_path):
    handle, targets, corpus = setup
    ref = str(tmp_path / "ref")
    build_gallery(handle, targets, cfg(corpus), out_dir=ref, progress=False)
    out = str(tmp_path / "g")
    killed = []

    def kill_one_worker():                    # once the first target is written
        t0 = time.time()
        while not glob.glob(f"{out}/targets/*.json") and time.time() - t0 < 120:
            time.sleep(0.02)
        for a in ray.util.list_named_actors(all_namespaces=True):
            name = a["name"] if isinstance(a, dict) else a
            if name.startswith("featviz-worker-"):
                ray.kill(ray.get_actor(name, namespace=a.get("namespace")
                                       if isinstance(a, dict) else None))
                killed.append(name)
                return
    th = threading.Thread(target=kill_one_worker)
    th.start()
    res = build_gallery(handle, targets, cfg(corpus, ray="auto", ray_workers=2), out_dir=out,
                        progress=False)
    th.join()
    assert killed, "no worker was killed"
    assert sorted(res.done) == sorted(str(t) for t in targets)     # each written once
    assert comparable(out) == comparable(ref)


def test_a_ray_gallery_fills_and_reads_the_mining_cache(cluster, setup, tmp_path, monkeypatch):
    from dataclasses import replace

    from featviz.site import cluster as cl
    handle, targets, corpus = setup
    cache = str(tmp_path / "cache")
    first = str(tmp_path / "first")
    build_gallery(handle, targets, replace(cfg(corpus, ray="auto", ray_workers=2),
                                           cache_dir=cache), out_dir=first, progress=False)
    assert len(glob.glob(f"{cache}/**/*.json", recursive=True)) == len(targets)
    monkeypatch.setattr(cl.RayRunner, "mine", lambda *a, **k: pytest.fail("mined again"))
    again = str(tmp_path / "again")
    build_gallery(handle, targets, replace(cfg(corpus, ray="auto", ray_workers=2),
                                           cache_dir=cache), out_dir=again, progress=False)
    assert comparable(again) == comparable(first)


def test_an_unreachable_ray_address_is_one_line(capsys):
    assert main(["gallery", "--targets", "mlp:1:0", "--ray", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot reach the Ray cluster at '127.0.0.1:1'" in err and "\n" not in err


def test_ray_missing_is_one_line(monkeypatch, capsys):
    import builtins
    real = builtins.__import__

    def no_ray(name, *a, **kw):
        if name == "ray":
            raise ImportError("no ray")
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    assert main(["gallery", "--targets", "mlp:1:0", "--ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'featviz[ray]'" in err and "\n" not in err

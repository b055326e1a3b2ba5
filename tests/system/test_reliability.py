"""Reliability: kills, Ctrl-C, determinism, numerical faults, memory, remote code."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import word_corpus

import featviz
from featviz import FeatvizError
from featviz.mining.miner import MineConfig
from featviz.search.api import dream
from featviz.search.config import DreamConfig
from featviz.site.gallery import GalleryConfig, build_gallery

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return word_corpus(tmp_path_factory.mktemp("c") / "c.txt", 3, 30, 50)


def gallery_cmd(model_dir, corpus, out, targets="mlp:1:0-5"):
    return [sys.executable, "-m", "featviz", "gallery", "--model", model_dir, "--corpus", corpus,
            "--targets", targets, "--tokens", "600", "--window", "16", "--steps", "6",
            "--swap-iters", "4", "--cache-dir", "", "--out", out]


def env():
    e = dict(os.environ, PYTHONPATH=ROOT, TOKENIZERS_PARALLELISM="false")
    e.pop("FEATVIZ_CACHE", None)
    return e


def target_jsons(out):
    return sorted(glob.glob(os.path.join(out, "targets", "*.json")))


def comparable(out):
    """Every JSON result of a gallery, timing fields dropped."""
    docs = {}
    for f in [os.path.join(out, "gallery.json")] + target_jsons(out):
        d = json.load(open(f))                  # also proves no file is truncated
        d.pop("timing", None)
        d.pop("runs", None)                     # the manifest's wall times and targets/hour
        docs[os.path.relpath(f, out)] = d
    return docs


def manifest_bytes(out):
    """gallery.json byte for byte, the run timing (its own field, ``runs``) aside."""
    text = open(os.path.join(out, "gallery.json"), encoding="utf-8").read()
    man = json.loads(text)
    runs = json.dumps(man.pop("runs"), indent=1, ensure_ascii=False).replace("\n", "\n ")
    assert text.count(runs) == 1
    return text.replace(runs, "null")


def wait_for(out, n, proc, limit=120):
    t0 = time.time()
    while len(target_jsons(out)) < n and proc.poll() is None and time.time() - t0 < limit:
        time.sleep(0.05)


def test_sigkill_at_random_points_then_resume(model_dir, corpus, tmp_path):
    ref = str(tmp_path / "ref")
    subprocess.run(gallery_cmd(model_dir, corpus, ref), env=env(), check=True, capture_output=True)
    out = str(tmp_path / "g")
    rng = np.random.default_rng(0)
    for need in (0, 2, 5):                         # kill during start-up/mining, then mid-gallery
        proc = subprocess.Popen(gallery_cmd(model_dir, corpus, out), env=env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_for(out, need, proc)
        time.sleep(float(rng.uniform(0, 0.4)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for f in target_jsons(out):                # finished files are whole, never truncated
            json.load(open(f))
    done_before = len(target_jsons(out))
    r = subprocess.run(gallery_cmd(model_dir, corpus, out), env=env(), capture_output=True,
                       text=True, check=True)
    assert f"{done_before} already done" in r.stdout
    assert comparable(out) == comparable(ref)
    assert not glob.glob(os.path.join(out, "**", "*.tmp*"), recursive=True)
    # determinism: a second clean run writes byte-identical JSON (timing aside)
    again = str(tmp_path / "again")
    subprocess.run(gallery_cmd(model_dir, corpus, again), env=env(), check=True, capture_output=True)
    assert comparable(again) == comparable(ref)
    assert manifest_bytes(again) == manifest_bytes(ref)
    assert open(os.path.join(again, "index.html"), "rb").read() == \
        open(os.path.join(ref, "index.html"), "rb").read()


def default_sigint():
    """In the child before exec: SIGINT handled by default and not blocked (an ignored
    disposition and a blocked mask are both inherited)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_ends_cleanly_and_says_how_to_resume(model_dir, corpus, tmp_path):
    out = str(tmp_path / "g")
    # SIGINT as by default in the child: in a full fresh-clone suite the child ignored it
    # (an inherited disposition or mask; which test leaves it so was not found) and ran
    # to its end (rc 0).  48 targets, so the interrupt lands mid-gallery.
    proc = subprocess.Popen(gallery_cmd(model_dir, corpus, out, "mlp:1:0-47"), env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    wait_for(out, 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-500:]
    assert len(target_jsons(out)) < 48
    last = err.strip().splitlines()[-1]
    assert "Re-run the same command" in last and "Traceback" not in err
    for f in target_jsons(out):
        json.load(open(f))


class Faulty(featviz.Atom):
    """mlp:1:0, except NaN wherever it would be positive and +Inf in its lowest values."""

    def per_position(self, captures, handle):
        v = super().per_position(captures, handle)
        return torch.where(v > 0, float("nan"), torch.where(v < -1e-3, float("inf"), v))


def test_numerical_faults_are_reported_per_target(llama, corpus, tmp_path):
    ts = [Faulty("mlp", 1, 0), featviz.parse_target("mlp:1:1", llama)]
    cfg = GalleryConfig(mine=MineConfig(window=16, max_tokens=600, k=4),
                        dream=DreamConfig(length=4, batch=4, steps=4, swap_iters=3, caps=(5.0,),
                                          init_samples=8, beam_lams=()),
                        corpus=corpus, cache_dir="")
    out = str(tmp_path / "g")
    res = build_gallery(llama, ts, cfg, out_dir=out, progress=False)
    recs = {r["target"]: r for r in (json.load(open(f)) for f in target_jsons(out))}
    bad, good = recs["mlp:1:0"], recs["mlp:1:1"]
    assert bad["status"] in ("nonfinite", "diverged", "error") and bad["error"]
    assert bad["stats"]["nonfinite"] > 0 and "nonfinite" in bad["flags"]
    assert good["status"] == "ok" and res.failed == ["mlp:1:0"]
    assert "status: nonfinite" in open(os.path.join(out, "targets", "mlp_1_0.html")).read()
    for line in open(os.path.join(out, "gallery.jsonl")):
        json.loads(line)                                  # NaN/Inf never leak into the JSON


def test_dreaming_checks_its_memory(llama):
    with pytest.raises(FeatvizError, match="lower --batch"):
        dream(llama, "mlp:1:0", DreamConfig(batch=8, memory_gb=1e-6), progress=False)
    with pytest.raises(FeatvizError, match="lower --batch"):
        dream(llama, "mlp:1:0", DreamConfig(batch=10 ** 7, length=4), progress=False)


def test_remote_code_never_runs_without_the_flag(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    marker = tmp_path / "ran"
    (d / "config.json").write_text(json.dumps({
        "model_type": "evil", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}}))
    (d / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(FeatvizError, match="--trust-remote-code"):
        featviz.load_model(str(d))
    assert not marker.exists()


def test_same_command_same_bytes_on_the_jax_backend(model_dir, corpus, tmp_path):
    pytest.importorskip("jax")
    runs = []
    for name in ("a", "b"):
        out = str(tmp_path / name)
        cmd = gallery_cmd(model_dir, corpus, out) + ["--backend", "jax"]
        cmd[cmd.index("mlp:1:0-5")] = "mlp:1:0-1"
        subprocess.run(cmd, env=env(), check=True, capture_output=True)
        runs.append(out)
    assert comparable(runs[0]) == comparable(runs[1])
    assert manifest_bytes(runs[0]) == manifest_bytes(runs[1])

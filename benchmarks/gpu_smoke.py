"""GPU smoke check: every layer on a CUDA device with tiny random models (no model files).

dream_many on both backends (each best activation re-read independently), mine, query,
audit and a gallery, for a tiny Llama and a tiny GPT-2.  Run it where a GPU is lent:

    PYTHONPATH=. python benchmarks/gpu_smoke.py          # DEV=cpu to try it on a CPU

It found that the JAX relaxation handed its argmax snapshots to torch on the CPU while the
mask lived on the GPU (a crash once the relaxation ran 10 steps on a GPU).
"""
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
from conftest import make_tokenizer, tiny_gpt2, tiny_llama, word_corpus  # noqa: E402

import featviz  # noqa: E402
from featviz import AuditConfig, DreamConfig, GalleryConfig, MineConfig, QueryConfig  # noqa: E402

tok = make_tokenizer()
work = Path(tempfile.mkdtemp())
corpus = word_corpus(work / "c.txt", 0, 60, 40)
FAST = dict(steps=10, swap_iters=2, length=5, batch=4, init_samples=8, beam_lams=(0.2,),
            beam_width=2, beam_expand=8, hard_samples=2, children=4, sweep=16)
out = {}
for name, make in (("llama", tiny_llama), ("gpt2", tiny_gpt2)):
    DEV = os.environ.get("DEV", "cuda")
    h = featviz.wrap_model(make(tok).to(DEV), tok, name)
    assert h.device.type == DEV
    ts = [featviz.parse_target(s, h) for s in ("mlp:1:3", "head:2:1@max", "attn:1:1:2", "resid:2:4@mean")]
    for backend in ("torch", "jax"):
        t0 = time.time()
        rs = featviz.dream_many(h, ts, DreamConfig(backend=backend, **FAST), progress=False)
        out[f"{name}/{backend}/dream_many"] = [round(r.best.activation, 4) for r in rs] + [round(time.time() - t0, 1)]
        for r, t in zip(rs, ts):        # the verified figure, re-read independently
            v, _ = featviz.evaluate_ids(h, [t], [r.best.token_ids])
            assert abs(float(v[0, 0]) - r.best.activation) < 1e-3 * max(1, abs(r.best.activation)), (name, backend, str(t))
    ex = featviz.mine(h, ts, MineConfig(window=10, max_tokens=600), source=corpus, progress=False)
    out[f"{name}/mine_max"] = [round(e.max, 4) for e in ex]
    q = featviz.query(h, ts[0], QueryConfig(dream=DreamConfig(**FAST), corpus=corpus, corpus_tokens=300, window=10), progress=False)
    out[f"{name}/query_ratio"] = q.ratio_best
    rep = featviz.audit(h, ts[:1], AuditConfig(dream=DreamConfig(**FAST), corpus=corpus, mine=MineConfig(window=10, max_tokens=600), contexts=4, context_len=6, baseline=8), progress=False)
    out[f"{name}/audit"] = [(c.name, c.verdict) for c in rep.targets[0].checks]
    g = featviz.build_gallery(h, ts[:2], GalleryConfig(dream=DreamConfig(**FAST), corpus=corpus, mine=MineConfig(window=10, max_tokens=600), cache_dir=""), out_dir=str(work / f"g{name}"), progress=False)
    out[f"{name}/gallery_failed"] = g.failed
print(json.dumps(out, indent=1))
print("GPU CHECK OK")

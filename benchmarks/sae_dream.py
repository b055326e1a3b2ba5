"""Dreaming SAE features at the quality budget, with their fluent ratio.

No released SAE can be downloaded here, so the script trains one: a TopK SAE (k = 32,
d_sae = 8 x d_model) on the embedded model's blocks.6.hook_resid_post over the first
100,000 tokens of the embedded corpus (Adam, decoder rows kept at unit norm), saved as
SAELens saves one (cfg.json + sae_weights.safetensors) in a temporary folder.  It then
picks --features live features (firing on 0.2-5 % of tokens, drawn with --seed), reads
their corpus max over the first 200,000 tokens (BOS + 63-token windows, as the dreaming
benchmark's neurons), and dreams each with featviz's defaults at --budget seconds
(``dream_quality.run_one``: every figure re-read in float32 on the re-encoded text).

Run: python benchmarks/sae_dream.py [--budget 90] [--features 3] [--train-seconds 90]
Writes benchmarks/results/sae_dream_cpu.md
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from _results import write_result  # noqa: E402
from dream_quality import run_one  # noqa: E402

import featviz  # noqa: E402
import featviz.mining.corpus as corpus_mod  # noqa: E402
from featviz.mining.miner import scan  # noqa: E402
from featviz.model.forward import run  # noqa: E402

HOOK = "blocks.6.hook_resid_post"
K = 32


def activations(m, tokens: int) -> torch.Tensor:
    site = featviz.parse_targets(f"{HOOK}:0", m)[0].site
    wins = list(corpus_mod.windows(m, None, 63, max_tokens=tokens))
    out = []
    with torch.no_grad():
        for i in range(0, len(wins), 16):
            ids = torch.as_tensor(np.stack([w.ids for w in wins[i:i + 16]]))
            caps, _ = run(m, {site}, input_ids=ids)
            out.append(caps[site][:, 1:].reshape(-1, m.d_model).float())
    return torch.cat(out)


def train_topk(x: torch.Tensor, d_sae: int, seconds: float, seed: int) -> dict:
    """A TopK SAE fitted to x (n, d) for ``seconds``: MSE, Adam, unit-norm decoder rows."""
    g = torch.Generator().manual_seed(seed)
    d = x.shape[1]
    w_dec = torch.randn(d_sae, d, generator=g)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    p = {"W_enc": w_dec.T.clone().requires_grad_(), "b_enc": torch.zeros(d_sae, requires_grad=True),
         "W_dec": w_dec.requires_grad_(), "b_dec": x.mean(0).clone().requires_grad_()}
    opt = torch.optim.Adam(p.values(), lr=4e-4)
    t0, steps, loss = time.perf_counter(), 0, float("nan")
    while time.perf_counter() - t0 < seconds:
        xb = x[torch.randint(len(x), (4096,), generator=g)]
        h = (xb - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
        top = h.topk(K, dim=-1)
        acts = torch.zeros_like(h).scatter(-1, top.indices, top.values.relu())
        rec = acts @ p["W_dec"] + p["b_dec"]
        err = ((rec - xb) ** 2).sum(-1).mean() / ((xb - xb.mean(0)) ** 2).sum(-1).mean()
        opt.zero_grad()
        err.backward()
        opt.step()
        with torch.no_grad():
            p["W_dec"] /= p["W_dec"].norm(dim=1, keepdim=True)
        steps, loss = steps + 1, float(err.detach())
    return {"weights": {k: v.detach().contiguous() for k, v in p.items()}, "steps": steps,
            "fvu": loss}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=90.0)
    ap.add_argument("--features", type=int, default=3)
    ap.add_argument("--train-seconds", type=float, default=90.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    m = featviz.load_model()
    x = activations(m, 100_000)
    d_sae = 8 * m.d_model
    fit = train_topk(x, d_sae, args.train_seconds, args.seed)
    w = fit["weights"]
    with torch.no_grad():
        h = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
        idx = h.topk(K, dim=-1).indices
        freq = torch.bincount(idx.reshape(-1), minlength=d_sae).double() / len(x)
    live = torch.nonzero((freq > 0.002) & (freq < 0.05)).reshape(-1).numpy()
    rng = np.random.default_rng(args.seed)
    picked = sorted(rng.choice(live, size=min(args.features, len(live)), replace=False).tolist())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "topk_sae")
        os.makedirs(folder)
        save_file(w, os.path.join(folder, "sae_weights.safetensors"))
        with open(os.path.join(folder, "cfg.json"), "w") as f:
            json.dump({"architecture": "topk", "d_in": m.d_model, "d_sae": d_sae, "k": K,
                       "apply_b_dec_to_input": True,
                       "metadata": {"hook_name": HOOK, "sae_lens_version": "6.0.0"}}, f)
        specs = [f"sae:{folder}:{n}" for n in picked]
        ex = scan(m, [featviz.parse_target(s, m) for s in specs], None, max_tokens=200_000, k=1,
                  progress=False)
        for spec, e in zip(specs, ex):
            row = run_one(m, spec, "featviz", args.budget, args.seed)
            row["corpus_max"] = e.max
            row["feature"] = int(spec.rsplit(":", 1)[1])
            row["freq"] = float(freq[row["feature"]])
            rows.append(row)
            r = row["act_6.5"]
            print(f"feature {row['feature']}: corpus max {e.max:.3f}, fluent (xe <= 6.5) "
                  f"{'none' if r is None else f'{r:.3f} ({r / e.max:.2f})'}, any "
                  f"{row['act_any']:.3f} (xe {row['xe_any']:.2f})", flush=True)
    fmt = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
    ratios = [0.0 if r["act_6.5"] is None else r["act_6.5"] / r["corpus_max"] for r in rows]
    lines = ["# Dreaming SAE features (CPU)", "",
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
             f"{torch.__version__}, model {m.name}; a TopK SAE (k = {K}, d_sae = {d_sae}) on "
             f"{HOOK} trained here for {args.train_seconds:.0f} s ({fit['steps']} Adam steps of "
             f"4,096 tokens from the first 100,000 corpus tokens; fraction of variance "
             f"unexplained {fit['fvu']:.2f} on the last batch); features firing on 0.2-5 % of "
             f"tokens drawn with seed {args.seed}; featviz defaults, {args.budget:.0f} s per "
             "feature, seed "
             f"{args.seed}; corpus max over the first 200,000 tokens (BOS + 63-token windows).",
             "", "| feature | fires on | corpus max | fluent (xe ≤ 6.5) / max | xe ≤ 5.0 / max | "
             "any / max (xe) | fluent text |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        mx = r["corpus_max"]
        q = lambda k: None if r[f"act_{k}"] is None else r[f"act_{k}"] / mx  # noqa: E731
        text = (r["text_6.5"] or "").replace("|", "\\|").replace("\n", "⏎")
        lines.append(f"| {r['feature']} | {r['freq']:.2%} | {mx:.3f} | {fmt(q('6.5'))} | "
                     f"{fmt(q('5'))} | {fmt(q('any'))} ({fmt(r['xe_any'])}) | `{text}` |")
    lines += ["", f"Median fluent ratio {statistics.median(ratios):.2f}; fluent ratio above 1 on "
              f"{sum(v > 1 for v in ratios)}/{len(ratios)}."]
    if any(math.isnan(r["corpus_max"]) for r in rows):
        lines.append("A feature never fired on the corpus: its ratios are not defined.")
    write_result("sae_dream_cpu.md", lines)


if __name__ == "__main__":
    main()

"""Mining a whole SAE dictionary in one streaming pass, against a bare hooked forward.

Random SAEs (SAELens folder layout: cfg.json + sae_weights.safetensors) on the embedded
model's blocks.6.hook_resid_post, d_sae = 8 x d_model (the issue's case) and 32 x d_model,
TopK (k = 64) and JumpReLU (each feature's threshold set so that it fires on 64/d_sae of
the tokens of a few corpus windows: L0 about 64, like released SAEs).  For each: tokens per
second of (a) the bare hooked forward, (b) the miner streaming over all d_sae features
(one encoding per window batch for all of them), and (c) for scale, the same miner
reading the first 32 features target by target (each atom encoding for itself) on the
first 5,000 tokens, which is what the one-encoding path replaces.  Runs alternate and the
best of --repeats is kept.  Random weights: the throughput, not the features, is the point.

Run: python benchmarks/sae_mining.py [--tokens 50000] [--repeats 2] [--mults 8,32]
Writes benchmarks/results/sae_mining_cpu.md
"""
import argparse
import json
import os
import platform
import tempfile
from statistics import NormalDist

import numpy as np
import torch
from _results import write_result
from mining_speed import bare, mined
from safetensors.numpy import save_file

import featviz
import featviz.mining.corpus as corpus_mod
import featviz.mining.miner as miner_mod
from featviz.mining.miner import MineConfig
from featviz.model.forward import run
from featviz.targets.core import all_sites

ONE = 32          # features mined one by one, for scale
L0 = 64           # active features per token


def heavy_densities(d_sae: int, rng) -> np.ndarray:
    """Per-feature firing rates with a heavy tail, as released SAEs have (a few dense
    features, most rare): log-normal (natural-log sd 2), capped at 0.5, scaled so that
    they add up to L0."""
    f = np.exp(rng.standard_normal(d_sae) * 2.0)
    for _ in range(20):                  # scale, cap, repeat: the capped mass goes elsewhere
        f = np.minimum(f * (L0 / f.sum()), 0.5)
    return f


def activity(acts: np.ndarray, w: dict, arch: str, k: int | None,
             window: int = 63) -> tuple[float, float]:
    """(mean features active per token, mean features active somewhere in a window) on the
    hooked activations ``acts`` (windows of ``window`` tokens, one after another, BOS left
    out): what the miner's bookkeeping grows with."""
    h = acts @ w["W_enc"] + w["b_enc"]
    if arch == "topk":
        on = np.zeros(h.shape, dtype=bool)
        np.put_along_axis(on, np.argpartition(-h, k, axis=1)[:, :k], True, axis=1)
        on &= h > 0
    else:
        on = (h > w["threshold"]) & (h > 0)
    per_window = on.reshape(-1, window, h.shape[1]).any(1).sum(1)
    return float(on.sum(1).mean()), float(per_window.mean())


def random_sae(folder, arch, d_in, d_sae, hook, seed=0, acts=None):
    """A random SAE saved as SAELens saves one; JumpReLU thresholds from ``acts`` (n, d_in)
    hooked activations, so that each feature fires on L0 / d_sae of them ("jumprelu"), or
    on its own rate from ``heavy_densities`` ("jumprelu-heavy": each feature's threshold
    at its pre-activation's mean + sd x the normal quantile, since the rarest rates lie
    far beyond what a few windows resolve)."""
    rng = np.random.default_rng(seed)
    w = {"W_enc": rng.standard_normal((d_in, d_sae)) / d_in ** 0.5,
         "W_dec": rng.standard_normal((d_sae, d_in)) / d_in ** 0.5,
         "b_enc": rng.standard_normal(d_sae) * 0.1 - 0.5, "b_dec": np.zeros(d_in)}
    heavy = arch == "jumprelu-heavy"
    arch = "jumprelu" if heavy else arch
    cfg = {"architecture": arch, "d_in": d_in, "d_sae": d_sae,
           "metadata": {"hook_name": hook, "sae_lens_version": "6.0.0"}}
    if arch == "jumprelu":
        h = acts @ w["W_enc"] + w["b_enc"]
        if heavy:
            z = np.array([NormalDist().inv_cdf(1 - f) for f in heavy_densities(d_sae, rng)])
            w["threshold"] = np.maximum(h.mean(0) + h.std(0) * z, 0.0)
        else:
            w["threshold"] = np.maximum(np.quantile(h, 1 - L0 / d_sae, axis=0), 0.0)
    if arch == "topk":
        cfg["k"] = L0
    active = activity(acts, w, arch, cfg.get("k"))
    os.makedirs(folder, exist_ok=True)
    save_file({k: v.astype(np.float32) for k, v in w.items()},
              os.path.join(folder, "sae_weights.safetensors"))
    with open(os.path.join(folder, "cfg.json"), "w") as f:
        json.dump(cfg, f)
    return folder, active


def one_by_one(handle, targets, wins, cfg):
    """The miner with the SAE group path off: every feature reads (and encodes) alone."""
    real = miner_mod.read_values

    def per_target(caps, ts, h, plan=None):
        return torch.stack([t.per_position(caps, h) for t in ts]), None
    miner_mod.read_values = per_target
    try:
        return mined(handle, targets, wins, cfg)
    finally:
        miner_mod.read_values = real


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--mults", default="8,32", help="d_sae / d_model, comma-separated")
    ap.add_argument("--out", default="sae_mining_cpu.md")
    ap.add_argument("--archs", default="topk,jumprelu,jumprelu-heavy",
                    help="topk, jumprelu (every feature at L0 / d_sae), jumprelu-heavy")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    m = featviz.load_model()
    cfg = MineConfig(max_tokens=args.tokens)
    wins = list(corpus_mod.windows(m, None, cfg.window, max_tokens=args.tokens))
    n_tok = len(wins) * cfg.window
    few = wins[:5000 // cfg.window]
    hook = "blocks.6.hook_resid_post"
    site = featviz.parse_targets(f"{hook}:0", m)[0].site        # the hook's capture
    with torch.no_grad():
        caps, _ = run(m, {site}, input_ids=torch.as_tensor(np.stack([w.ids for w in wins[:32]])))
    acts = caps[site][:, 1:].reshape(-1, m.d_model).double().numpy()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mult in [int(x) for x in args.mults.split(",")]:
            for arch in args.archs.split(","):
                d_sae = mult * m.d_model
                path, (l0, per_win) = random_sae(os.path.join(tmp, f"{arch}{d_sae}"), arch,
                                                 m.d_model, d_sae, hook, acts=acts)
                ts = featviz.parse_targets(f"sae:{path}:all", m)
                sites = all_sites(ts)
                tb, tm, t1 = [bare(m, sites, wins, cfg.batch_size)], [], []
                for _ in range(args.repeats):
                    tm.append(mined(m, ts, wins, cfg))
                    tb.append(bare(m, sites, wins, cfg.batch_size))
                    t1.append(one_by_one(m, ts[:ONE], few, cfg))
                sb = n_tok / min(tb)
                best = min(tm)
                # each mining run against the mean of the bare runs just before and after
                # it: a ratio that the machine's drift over minutes does not move
                paired = sorted((tb[i] + tb[i + 1]) / 2 / (t - f) for i, (t, f) in enumerate(tm))
                med = paired[len(paired) // 2] if len(paired) % 2 else \
                    (paired[len(paired) // 2 - 1] + paired[len(paired) // 2]) / 2
                ss, se = n_tok / (best[0] - best[1]), n_tok / best[0]
                b1 = min(t1)
                s1 = len(few) * cfg.window / (b1[0] - b1[1])
                rows.append((arch, d_sae, mult, l0, per_win, sb, ss, ss / sb, med, paired[0],
                             paired[-1], se / sb, best[1], s1))
                print(f"{arch} {d_sae}: bare {sb:.0f} tok/s, all features {ss:.0f} tok/s "
                      f"({ss / sb:.0%}; paired median {med:.0%}, {paired[0]:.0%}-{paired[-1]:.0%}; "
                      f"{se / sb:.0%} with finish {best[1]:.1f} s); "
                      f"{ONE} one by one {s1:.0f} tok/s", flush=True)
    lines = ["# Mining a whole SAE dictionary (CPU)", "",
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
             f"{torch.__version__}, model {m.name} (d_model {m.d_model}); {n_tok} tokens in "
             f"{len(wins)} windows of {cfg.window} (+BOS), batch {cfg.batch_size}, the miner's "
             f"default settings; best of {args.repeats}, runs alternating (bare first and last; "
             f"the paired column sets each mining run against the mean of the bare runs "
             f"beside it); random SAEs on "
             f"{hook}, L0 = {L0} (TopK k = {L0}; JumpReLU thresholds at each feature's "
             f"1 - {L0}/d_sae quantile; jumprelu-heavy: per-feature rates with a heavy tail, "
             "log-normal with natural-log sd 2, adding up to L0, as released SAEs have a few "
             "dense features and many rare ones). L0 and the features active per window are "
             "measured on the 32 windows the thresholds were set on: the miner's bookkeeping "
             "grows with the latter, so equal rates for all features are the costly case.", "",
             "Streaming = the pass over the corpus (forward to layer 6, one SAE encoding per "
             "batch for every feature, top-k and bottom-k windows, histogram, moments, band "
             "reservoirs, controls, position maxima); `finish` is the one-off per-target cost "
             "at the end (it does not grow with the corpus).  The last column mines only the "
             f"first {ONE} features on the first {len(few) * cfg.window} tokens, each atom "
             "encoding for itself (the path the one-encoding group replaces).", "",
             "| architecture | d_sae | L0 | features active per window | bare hooked forward "
             "(tok/s) | all features, streaming (tok/s) | streaming / bare (best of each) | "
             "streaming / bare, paired: median (range) | with finish / bare "
             f"| finish (s) | {ONE} features one by one (tok/s) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {a} | {d} ({x} x d_model) | {lz:.0f} | {pw:.0f} | {b:.0f} | {s:.0f} | {r:.0%} "
              f"| {md:.0%} ({lo:.0%}-{hi:.0%}) | {e:.0%} | {f:.1f} | {o:.0f} |"
              for a, d, x, lz, pw, b, s, r, md, lo, hi, e, f, o in rows]
    write_result(args.out, lines)


if __name__ == "__main__":
    main()

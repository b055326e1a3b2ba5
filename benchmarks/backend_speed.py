"""Relaxation steps per second: torch eager vs the JAX backend (jit), same objective.

For (batch, length) in (8, 12), (32, 12), (128, 12), targets at layers 6 and 24 of the
embedded model, with the fluency term (every row lambda > 0: full forward + logits) and
without it (lambda = 0: the forward stops after the target's layer).  One step = Gumbel
sample + forward + backward + Adam update.  JAX's first step (compile) is timed apart.

Run: python benchmarks/backend_speed.py [--steps 6]
Writes benchmarks/results/backend_speed.md
"""
import argparse
import os
import platform
import time

import numpy as np
import torch
from _arch import model_for
from _results import write_result

import featviz
from featviz.backends.torch.relax import gumbel_softmax
from featviz.backends.torch.score import forward_scores
from featviz.model.vocab import readable_mask


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def torch_steps(h, t, B, n, lam, steps, precision, cap=None):
    """Median seconds of one relaxation step in torch on the model's device."""
    dev = h.device
    mask = readable_mask(h)
    theta = torch.zeros(B, n, h.vocab_size, requires_grad=True, device=dev)
    opt = torch.optim.Adam([theta], lr=0.3)
    bias = torch.where(mask, 0.0, -1e9)
    W = h.embedding
    bos = W[h.bos_id][None, None].expand(B, 1, -1)
    g = torch.Generator(device=dev).manual_seed(0)
    lam = lam.to(dev)
    cap = torch.full((B,), float("inf"), device=dev) if cap is None else cap.to(dev)
    times = []
    for i in range(steps + 1):
        _sync(dev)
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            y = gumbel_softmax(theta + bias, 1.0, g, hard=True)
            score, _, _, _ = forward_scores(h, t, torch.cat([bos, y @ W], 1), y, 1, lam, cap)
        opt.zero_grad(set_to_none=True)
        (-score.sum()).backward()
        opt.step()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def jax_steps(h, t, B, n, lam, steps, cap=None, precision="fp32"):
    """(median seconds of one jitted relaxation step, seconds of the first incl. compile)."""
    import jax.numpy as jnp

    from featviz.backends.jax.forward import to_jax
    from featviz.backends.jax.relax import make_step, step_key
    jm = to_jax(h, precision)
    mask = readable_mask(h).cpu().numpy()
    cap = np.full(B, np.inf, np.float32) if cap is None else cap.cpu().numpy()
    step, init = make_step(jm, t, mask, lam.cpu().numpy(), cap,
                           prefix_ids=[h.bos_id], suffix_ids=[], n=n, hard=True, lr=0.3)
    theta = jnp.zeros((B, n, h.vocab_size), jnp.float32)
    state = init(theta)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        key = np.uint32(step_key(0, i))        # the noise is drawn inside the compiled step
        theta, state, act, _, _ = step(jm.params, theta, state, key, jnp.float32(1.0))
        act.block_until_ready()
        theta.block_until_ready()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:])), times[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--device", default="cpu", help="torch's device (JAX takes its default)")
    ap.add_argument("--arch", help="folder from _arch.save_arch: random weights, same network")
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    h = model_for(args)
    configs = [(layer, idx, fluency, B) for layer, idx in ((6, 308), (24, 1097))
               for fluency in (False, True) for B in (8, 32, 128)]

    def setup(layer, idx, fluency, B):
        t = featviz.parse_target(f"mlp:{layer}:{idx}", h)
        lam = torch.full((B,), 0.3 if fluency else 0.0)
        return t, lam, (args.steps if B < 128 else max(2, args.steps // 2))

    # every torch row first, before JAX starts its thread pool (XLA's idle worker threads
    # would otherwise share the cores with torch's), then every JAX row
    torch_t = {}
    for c in configs:
        t, lam, steps = setup(*c)
        torch_t[c] = (torch_steps(h, t, c[3], 12, lam, steps, "fp32"),
                      torch_steps(h, t, c[3], 12, lam, steps, "bf16"))
        print(f"{c}: torch fp32 {1 / torch_t[c][0]:.2f}/s, bf16 {1 / torch_t[c][1]:.2f}/s",
              flush=True)
    import jax
    jdev = jax.devices()[0]
    rows = []
    for c in configs:
        layer, _, fluency, B = c
        t, lam, steps = setup(*c)
        tt, tb = torch_t[c]
        tj, _ = jax_steps(h, t, B, 12, lam, steps)
        tjb, compile_s = jax_steps(h, t, B, 12, lam, steps, precision="bf16")
        rows.append((layer, fluency, B, 1 / tt, 1 / tb, 1 / tj, 1 / tjb, tt / tj,
                     tt / tjb, tb / tjb, compile_s))
        print(f"layer {layer} fluency {fluency} batch {B}: torch fp32 {1 / tt:.2f}/s, "
              f"torch bf16 {1 / tb:.2f}/s, jax fp32 {1 / tj:.2f}/s, jax bf16 "
              f"{1 / tjb:.2f}/s ({tt / tjb:.2f}x torch fp32, {tb / tjb:.2f}x torch bf16), "
              f"first jax bf16 step {compile_s:.1f} s", flush=True)
    where = (f"{platform.machine()}, {os.cpu_count()} cores" if args.device == "cpu" else
             f"torch on {torch.cuda.get_device_name(0)}, JAX on {jdev.device_kind}")
    lines = ["# Relaxation step speed: torch eager vs JAX (jit)", "",
             f"{where}, torch {torch.__version__}, jax {jax.__version__}, "
             f"model {h.name}, length 12, straight-through Gumbel-softmax + forward + backward + "
             f"Adam; median over {args.steps} steps after one warm-up step; all torch rows run "
             "before JAX is started. "
             "JAX bf16: weight matrices in bfloat16, products bf16 x bf16 -> f32 forward and "
             "backward, everything else float32 (what featviz's default search precision, "
             "bf16, runs on each backend).", "",
             "| layer | fluency term | batch | torch fp32 (steps/s) | torch bf16 autocast (steps/s) "
             "| JAX fp32 (steps/s) | JAX bf16 (steps/s) | JAX fp32 / torch fp32 "
             "| JAX bf16 / torch fp32 | JAX bf16 / torch bf16 | JAX bf16 first step incl. compile (s) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {l} | {'yes' if f else 'no'} | {b} | {a:.2f} | {c:.2f} | {j:.2f} | {jb:.2f} "
              f"| {r:.2f}x | {rb:.2f}x | {rbb:.2f}x | {cs:.1f} |"
              for l, f, b, a, c, j, jb, r, rb, rbb, cs in rows]
    write_result("backend_speed.md" if args.device == "cpu" else
                 f"backend_speed_{args.device}.md", lines)


if __name__ == "__main__":
    main()

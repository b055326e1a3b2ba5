"""Pure-JAX forward passes of the llama family and GPT-2, with featviz's hook points.

    jm = to_jax(handle)                        # parameters converted once from the torch model
    caps, logits = forward(jm, embeds, sites=frozenset({("mlp.hook_post", 6)}))

``forward`` is a pure function of (parameters, input embeddings); the architecture
constants live in a hashable ``Spec`` so ``jax.jit`` can treat them as static.  Hook
sites are TransformerLens names, as in the torch backend: ``mlp.hook_post`` (input of
the MLP's output projection), ``attn.hook_z`` (merged head outputs before the
attention output projection), ``attn.hook_pattern`` (attention probabilities, (B, H,
T, T)) and ``hook_resid_post`` (residual stream after the block).  Every target kind
reads the same value here as in the torch backend (tests/test_jax.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from featviz.errors import FeatvizError
from featviz.model.precision import as_loaded
from featviz.model.forward import (
    ATTN_OUT,
    LN_FINAL,
    MLP_OUT,
    MLP_POST,
    MLP_PRE,
    MLP_PRE_LINEAR,
    PATTERN,
    RESID_MID,
    RESID_POST,
    RESID_PRE,
    SCORES,
    K,
    Q,
    V,
    Z,
)

JAX_TYPES = ("llama", "mistral", "qwen2", "gpt2")   # model_type values the JAX backend runs


@dataclass(frozen=True)
class Spec:
    arch: str               # "llama" | "gpt2"
    n_layers: int
    n_heads: int
    n_kv: int
    head_dim: int
    eps: float
    act: str                # jax activation name
    scale: float            # attention logit scale


@dataclass
class JaxModel:
    spec: Spec
    params: dict            # pytree of jnp arrays
    inv_freq: object        # rotary inverse frequencies (llama) or None
    rope_scale: float


def supported(handle) -> bool:
    return handle.model_type in JAX_TYPES


def compile_cache_dir() -> str | None:
    """Where compiled JAX code is kept between runs (``FEATVIZ_JAX_CACHE``; empty: off)."""
    root = os.environ.get("FEATVIZ_JAX_CACHE")
    if root is None:
        root = os.path.join(os.path.expanduser("~"), ".cache", "featviz", "jax")
    return root or None


def use_compile_cache() -> None:
    """Keep every compilation that took over a second on disk (JAX's persistent
    compilation cache), so a later run, or another process, loads it instead of
    compiling again: on the 2-core CPU a relaxation step took tens of seconds to compile,
    a share of a 90 s budget.  Set once per process, before the first compilation."""
    import jax
    root = compile_cache_dir()
    if root and jax.config.jax_compilation_cache_dir is None:
        os.makedirs(root, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", root)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def use_device(handle):
    """Make the JAX device that matches the handle's torch device the default one (cpu ->
    JAX's CPU, cuda:N -> the N-th JAX GPU), or say why it cannot.  Turns on the on-disk
    compilation cache (``use_compile_cache``)."""
    import jax
    use_compile_cache()
    dev = handle.device
    if dev.type == "cpu":
        want = jax.devices("cpu")[0]
    elif dev.type == "cuda":
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:
            gpus = []
        if not gpus:
            raise FeatvizError(f"the model is on {dev} but this JAX has no GPU backend; install "
                               "a CUDA jaxlib (pip install 'jax[cuda12]') or use --backend torch")
        i = dev.index or 0
        if i >= len(gpus):
            raise FeatvizError(f"the model is on {dev} but JAX sees {len(gpus)} GPU(s); use "
                               "--backend torch or another --device")
        want = gpus[i]
    else:
        raise FeatvizError(f"the JAX backend cannot run beside a model on '{dev.type}'; use "
                           "--backend torch (or --device cpu)")
    jax.config.update("jax_default_device", want)
    return want


def _act_name(name: str) -> str:
    table = {"silu": "silu", "swish": "silu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
             "gelu_fast": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
    if name not in table:
        raise FeatvizError(f"the JAX backend has no activation '{name}'; use --backend torch")
    return table[name]


_MATRICES = ("q", "k", "v", "o", "gate", "up", "down", "qkv", "fc", "proj")


def to_jax(handle, precision: str = "fp32") -> JaxModel:
    """Convert the handle's torch weights to JAX arrays once (cached on the handle).

    ``precision="bf16"``: the same model with every weight matrix (and a copy of the
    embedding used in products) in bfloat16, for the search: products take bfloat16
    inputs, everything else (residual stream, norms, softmax, the embedding lookup)
    stays float32, as under torch's bf16 autocast.  Reports never use it."""
    if precision == "bf16":
        if "jax_model_bf16" not in handle.cache:
            handle.cache["jax_model_bf16"] = _lowered(to_jax(handle))
        return handle.cache["jax_model_bf16"]
    if "jax_model" in handle.cache:
        return handle.cache["jax_model"]
    if not supported(handle):
        raise FeatvizError(f"the JAX backend does not run '{handle.model_type}' models; it runs "
                           f"{', '.join(JAX_TYPES)} (use --backend torch for this model)")
    import jax.numpy as jnp
    use_device(handle)
    with as_loaded(handle.model):     # float32 weights even inside the search's arithmetic
        jm = _convert(handle, jnp)
    handle.cache["jax_model"] = jm
    return jm


def _convert(handle, jnp) -> JaxModel:
    m, cfg = handle.model, handle.model.config
    a = lambda t: jnp.asarray(t.detach().float().cpu().numpy())  # noqa: E731
    opt = lambda mod, name: a(getattr(mod, name)) if getattr(mod, name, None) is not None else None  # noqa: E731
    layers = []
    if handle.arch == "llama":
        for blk in m.model.layers:
            at, mlp = blk.self_attn, blk.mlp
            layers.append({"ln1": a(blk.input_layernorm.weight), "ln2": a(blk.post_attention_layernorm.weight),
                           "q": a(at.q_proj.weight), "k": a(at.k_proj.weight), "v": a(at.v_proj.weight),
                           "o": a(at.o_proj.weight), "qb": opt(at.q_proj, "bias"),
                           "kb": opt(at.k_proj, "bias"), "vb": opt(at.v_proj, "bias"),
                           "ob": opt(at.o_proj, "bias"), "gate": a(mlp.gate_proj.weight),
                           "up": a(mlp.up_proj.weight), "down": a(mlp.down_proj.weight)})
        rot = m.model.rotary_emb
        params = {"embed": a(m.model.embed_tokens.weight), "layers": layers,
                  "norm": a(m.model.norm.weight), "unembed": a(m.lm_head.weight)}
        scaling = getattr(m.model.layers[0].self_attn, "scaling", handle.head_dim ** -0.5)
        spec = Spec("llama", handle.n_layers, handle.n_heads, handle.n_kv_heads, handle.head_dim,
                    float(cfg.rms_norm_eps), _act_name(cfg.hidden_act), float(scaling))
        jm = JaxModel(spec, params, np.asarray(rot.inv_freq.float().cpu().numpy()),
                      float(getattr(rot, "attention_scaling", 1.0)))
    else:
        for blk in m.transformer.h:
            layers.append({"ln1": a(blk.ln_1.weight), "ln1b": a(blk.ln_1.bias),
                           "ln2": a(blk.ln_2.weight), "ln2b": a(blk.ln_2.bias),
                           "qkv": a(blk.attn.c_attn.weight), "qkvb": a(blk.attn.c_attn.bias),
                           "o": a(blk.attn.c_proj.weight), "ob": a(blk.attn.c_proj.bias),
                           "fc": a(blk.mlp.c_fc.weight), "fcb": a(blk.mlp.c_fc.bias),
                           "proj": a(blk.mlp.c_proj.weight), "projb": a(blk.mlp.c_proj.bias)})
        params = {"embed": a(m.transformer.wte.weight), "pos": a(m.transformer.wpe.weight),
                  "layers": layers, "norm": a(m.transformer.ln_f.weight),
                  "normb": a(m.transformer.ln_f.bias), "unembed": a(m.lm_head.weight)}
        scale = (handle.head_dim ** -0.5) if getattr(cfg, "scale_attn_weights", True) else 1.0
        spec = Spec("gpt2", handle.n_layers, handle.n_heads, handle.n_heads, handle.head_dim,
                    float(cfg.layer_norm_epsilon), _act_name(cfg.activation_function), scale)
        jm = JaxModel(spec, params, None, 1.0)
    return jm


def _lowered(jm: JaxModel) -> JaxModel:
    """jm with bfloat16 weight matrices and an extra bfloat16 'embed_mm' for products."""
    import jax.numpy as jnp
    bf = lambda w: w.astype(jnp.bfloat16)  # noqa: E731
    layers = [{k: (bf(v) if k in _MATRICES else v) for k, v in p.items()}
              for p in jm.params["layers"]]
    params = {**jm.params, "layers": layers, "unembed": bf(jm.params["unembed"]),
              "embed_mm": bf(jm.params["embed"])}
    return JaxModel(jm.spec, params, jm.inv_freq, jm.rope_scale)


def embed_matrix(params):
    """The embedding as products use it (bfloat16 in a bf16 model; the lookup stays exact)."""
    return params.get("embed_mm", params["embed"])


# ---------------------------------------------------------------- pure pieces
def _act(name, x):
    import jax
    if name == "silu":
        return jax.nn.silu(x)
    if name == "gelu_tanh":
        return jax.nn.gelu(x, approximate=True)
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    return jax.nn.relu(x)


def _rms(x, w, eps):
    import jax.numpy as jnp
    return w * (x * jax_rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps))


def jax_rsqrt(x):
    import jax
    return jax.lax.rsqrt(x)


def _ln(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) * jax_rsqrt(var + eps) * w + b


def mm(x, w):
    """x @ w; with bfloat16 weights the product takes bfloat16 inputs and accumulates in
    float32, forward and backward (see ``_mm_lo``), result in x's dtype."""
    import jax.numpy as jnp
    if w.dtype != jnp.bfloat16:
        return x @ w
    return _mm_lo()(x, w).astype(x.dtype)


@lru_cache(maxsize=1)
def _mm_lo():
    """bf16 x bf16 -> f32 product with a hand-written backward of the same kind: left to
    autodiff, the transposed products get float32 cotangents and XLA's CPU backend runs
    them (and even the forward) as float32 products of up-cast inputs."""
    import jax
    import jax.numpy as jnp
    lo, f32 = jnp.bfloat16, jnp.float32

    def prod(a, b):
        return jnp.matmul(a.astype(lo), b.astype(lo), preferred_element_type=f32)

    f = jax.custom_vjp(prod)

    def fwd(x, w):
        return prod(x, w), (x, w)

    def bwd(res, g):
        x, w = res
        dx = prod(g, jnp.swapaxes(w, -1, -2)).astype(x.dtype)
        xs = x.reshape(-1, x.shape[-1])
        dw = prod(xs.T, g.reshape(-1, g.shape[-1])).astype(w.dtype)   # unused ones compile away
        return dx, dw
    f.defvjp(fwd, bwd)
    return f


def _lin(x, w, b=None):
    """torch Linear: x @ W.T + b."""
    y = mm(x, w.T)
    return y if b is None else y + b


def _rope(x, cos, sin):
    import jax.numpy as jnp
    h = x.shape[-1] // 2
    rot = jnp.concatenate([-x[..., h:], x[..., :h]], axis=-1)
    return x * cos + rot * sin


def _attend(q, k, v, scale, offset: int = 0):
    """q (B,T,H,hd) at positions offset.., k/v (B,offset+T,H,hd) -> z (B,T,H*hd),
    probs (B,H,T,offset+T), scores (B,H,T,offset+T): 0 where the causal mask hides a key,
    as the torch capture reads them)."""
    import jax
    import jax.numpy as jnp
    T, K = q.shape[1], k.shape[1]
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale
    causal = jnp.arange(K)[None, :] <= (offset + jnp.arange(T))[:, None]
    p = jax.nn.softmax(jnp.where(causal, s, -jnp.inf), axis=-1)
    z = jnp.einsum("bhqk,bkhd->bqhd", p, v)
    return z.reshape(z.shape[0], T, -1), p, jnp.where(causal, s, 0.0)


def forward(jm: JaxModel, embeds, *, sites=frozenset(), need_logits: bool = False,
            jit: bool = True):
    """Run the model on input embeddings (B, T, d) that start with BOS's embedding.

    Stops after the deepest block a site needs unless logits are wanted.  Returns
    ({(site, layer): array}, logits or None).  Compiled once per (shape, sites).
    """
    f = _jitted() if jit else forward_raw
    inv = None if jm.inv_freq is None else jm.inv_freq
    return f(jm.spec, jm.params, inv, jm.rope_scale, embeds, frozenset(sites), need_logits)


@lru_cache(maxsize=1)
def _jitted():
    import jax
    return jax.jit(forward_raw, static_argnums=(0, 3, 5, 6))


def _last_layer(spec: Spec, sites, need_logits) -> int:
    """The deepest block a run needs (layer -1, ln_final, means the last)."""
    if need_logits or not sites:
        return spec.n_layers - 1
    return max(spec.n_layers - 1 if l < 0 else l for _, l in sites)


def _blocks(spec: Spec, params, inv_freq, rope_scale, x, sites, stop: int, past=None,
            keep_kv: bool = False):
    """Blocks 0..stop on x (B, T, d) placed after ``past``'s positions (per layer (k, v) of
    an earlier run, batch 1 or B).  Returns (captures, residual, per-layer (k, v) or None)."""
    import jax.numpy as jnp
    B, T, _ = x.shape
    off = 0 if past is None else past[0][0].shape[1]
    caps, kvs = {}, []
    want = set(sites)
    if spec.arch == "llama":
        pos = jnp.arange(off, off + T, dtype=jnp.float32)
        freqs = pos[:, None] * jnp.asarray(inv_freq)[None]
        emb = jnp.concatenate([freqs, freqs], axis=-1)
        cos, sin = jnp.cos(emb) * rope_scale, jnp.sin(emb) * rope_scale
        cos, sin = cos[None, :, None], sin[None, :, None]
    else:
        x = x + params["pos"][off:off + T][None]
    rep = spec.n_heads // spec.n_kv
    for l in range(stop + 1):
        p = params["layers"][l]
        if spec.arch == "llama":
            h = _rms(x, p["ln1"], spec.eps)
            q = _lin(h, p["q"], p["qb"]).reshape(B, T, spec.n_heads, spec.head_dim)
            k = _lin(h, p["k"], p["kb"]).reshape(B, T, spec.n_kv, spec.head_dim)
            v = _lin(h, p["v"], p["vb"]).reshape(B, T, spec.n_kv, spec.head_dim)
            raw = (q, k, v)
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        else:
            h = _ln(x, p["ln1"], p["ln1b"], spec.eps)
            qkv = mm(h, p["qkv"]) + p["qkvb"]
            q, k, v = (t.reshape(B, T, spec.n_heads, spec.head_dim) for t in jnp.split(qkv, 3, -1))
            raw = (q, k, v)
        for key, val in zip((Q, K, V), raw):
            if (key, l) in want:
                caps[(key, l)] = val.reshape(B, T, -1)
        if keep_kv:
            kvs.append((k, v))
        if past is not None:
            pk, pv = past[l]
            k = jnp.concatenate([jnp.broadcast_to(pk, (B,) + pk.shape[1:]), k], 1)
            v = jnp.concatenate([jnp.broadcast_to(pv, (B,) + pv.shape[1:]), v], 1)
        if rep > 1:
            k, v = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
        z, probs, scores = _attend(q, k, v, spec.scale, off)
        pre = x
        if spec.arch == "llama":
            attn_out = _lin(z, p["o"], p["ob"])
            x = mid = x + attn_out
            h = _rms(x, p["ln2"], spec.eps)
            pre_act, pre_lin = _lin(h, p["gate"]), _lin(h, p["up"])
            post = _act(spec.act, pre_act) * pre_lin
            mlp_out = _lin(post, p["down"])
        else:
            attn_out = mm(z, p["o"]) + p["ob"]
            x = mid = x + attn_out
            h = _ln(x, p["ln2"], p["ln2b"], spec.eps)
            pre_act, pre_lin = mm(h, p["fc"]) + p["fcb"], None
            post = _act(spec.act, pre_act)
            mlp_out = mm(post, p["proj"]) + p["projb"]
        x = x + mlp_out
        for key, val in ((Z, z), (PATTERN, probs), (MLP_POST, post), (RESID_POST, x),
                         (RESID_PRE, pre), (RESID_MID, mid), (ATTN_OUT, attn_out),
                         (MLP_OUT, mlp_out), (MLP_PRE, pre_act), (MLP_PRE_LINEAR, pre_lin),
                         (SCORES, scores)):
            if (key, l) in want:
                caps[(key, l)] = val
    if (LN_FINAL, -1) in want and stop == spec.n_layers - 1:
        ones = jnp.ones(x.shape[-1], x.dtype)
        caps[(LN_FINAL, -1)] = (_rms(x, ones, spec.eps) if spec.arch == "llama"
                                else _ln(x, ones, jnp.zeros_like(ones), spec.eps))
    return caps, x, (kvs if keep_kv else None)


def _unembed(spec: Spec, params, x):
    if spec.arch == "llama":
        h = _rms(x, params["norm"], spec.eps)
    else:
        h = _ln(x, params["norm"], params["normb"], spec.eps)
    return mm(h, params["unembed"].T)


def forward_raw(spec: Spec, params, inv_freq, rope_scale, x, sites, need_logits):
    """``need_logits``: False, True (every position) or a static (lo, hi) pair: logits of
    positions lo..hi-1 only (the unembedding is a large share of a step; positions whose
    next-token distribution nobody reads are not computed)."""
    caps, x, _ = _blocks(spec, params, inv_freq, rope_scale, x, sites,
                         _last_layer(spec, sites, need_logits))
    logits = None
    if need_logits:
        if isinstance(need_logits, tuple):
            x = x[:, need_logits[0]:need_logits[1]]
        logits = _unembed(spec, params, x)
    return caps, logits


def forward_after(spec: Spec, params, inv_freq, rope_scale, fixed, x, sites, need_logits):
    """``forward_raw`` on concat(fixed, x) for a start ``fixed`` (1, P, d) shared by every row
    (BOS and the prefix): the start runs once at batch 1 and the rows attend to its keys
    and values, so a step does the model's work on x's positions only.  Returns the same
    captures and logits as ``forward_raw`` on the concatenation (tests/test_jax.py)."""
    import jax.numpy as jnp
    B, T = x.shape[:2]
    P = fixed.shape[1]
    stop = _last_layer(spec, sites, need_logits)
    pc, xp, kv = _blocks(spec, params, inv_freq, rope_scale, fixed, sites, stop, keep_kv=True)
    sc, xs, _ = _blocks(spec, params, inv_freq, rope_scale, x, sites, stop, past=kv)
    caps = {}
    for key, val in sc.items():
        head = pc[key]
        if key[0] in (PATTERN, SCORES):   # the start's queries never see x's keys
            head = jnp.pad(head, ((0, 0), (0, 0), (0, 0), (0, T)))
            caps[key] = jnp.concatenate([jnp.broadcast_to(head, (B,) + head.shape[1:]), val], 2)
        else:
            caps[key] = jnp.concatenate([jnp.broadcast_to(head, (B,) + head.shape[1:]), val], 1)
    logits = None
    if need_logits:
        lo, hi = need_logits if isinstance(need_logits, tuple) else (0, P + T)
        parts = []
        if lo < P:
            lp = _unembed(spec, params, xp[:, lo:min(hi, P)])
            parts.append(jnp.broadcast_to(lp, (B,) + lp.shape[1:]))
        if hi > P:
            parts.append(_unembed(spec, params, xs[:, max(lo - P, 0):hi - P]))
        logits = parts[0] if len(parts) == 1 else jnp.concatenate(parts, 1)
    return caps, logits


def embed_ids(jm: JaxModel, ids):
    import jax.numpy as jnp
    return jnp.asarray(jm.params["embed"])[jnp.asarray(ids)]

"""The relaxation step in JAX: Gumbel-softmax over per-position logits, optax Adam.

    step, init = make_step(jm, target, mask, lam, cap, ...)
    theta, opt_state, act, xe = step(params, theta, opt_state, key, tau)

The step is compiled once per shape (batch, length, vocabulary): the temperature and
the noise key are arguments, so nothing recompiles inside the loop.  The Gumbel noise
comes from a counter-based hash computed inside the compiled step (``hash_uniform``):
threefry noise for a (8, 12, 49152) step took 55 ms of a ~215 ms step on the 2-core
CPU; the hash is fused with the softmax and costs a few ms.  Same objective as
``featviz.objective`` (target - lambda * xe_soft, or the capped form per row).
"""
from __future__ import annotations

import math
import time

import numpy as np

from featviz.backends.jax.forward import JaxModel, embed_matrix, forward_after, mm
from featviz.backends.jax.read import canonical, directions_for, evaluate
from featviz.backends.objective import combine, needs_fluency
from featviz.backends.schedule import HardReadout, RelaxSettings, RelaxTrace, schedule
from featviz.errors import FeatvizError


def step_key(seed: int, step: int) -> int:
    """The uint32 noise key of one relaxation step (a pure function of seed and step)."""
    return (seed * 0x9E3779B1 + (step + 1) * 0x85EBCA77) & 0xFFFFFFFF


def _fmix32(x):
    """murmur3's 32-bit finaliser: a bijective avalanche mix of uint32 values."""
    import jax.numpy as jnp
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def unit_interval(x):
    """uint32 words as float32 in (0, 1), strictly: their top 23 bits m as (m + 0.5) / 2**23
    (exact in float32; with 24 bits the top word's (2**24 - 0.5) / 2**24 rounds to 1.0,
    whose Gumbel noise is inf: a NaN row in about one relaxation step in four)."""
    import jax.numpy as jnp
    return ((x >> 9).astype(jnp.float32) + 0.5) * (1.0 / 2 ** 23)


def hash_uniform(key, shape):
    """Uniform noise in (0, 1) for every element of ``shape``: two rounds of fmix32 over
    (flat index, key).  Counter-based like threefry, much cheaper, fine for Gumbel noise
    (23-bit resolution: ``unit_interval``)."""
    import jax
    import jax.numpy as jnp
    size = 1
    for d in shape:
        size *= d
    if size >= 2 ** 32:
        raise ValueError("hash_uniform draws at most 2**32 values per key")
    idx = jax.lax.iota(jnp.uint32, size).reshape(shape)
    k = jnp.asarray(key, jnp.uint32)
    x = _fmix32(idx ^ _fmix32(k))
    x = _fmix32(x + (k * jnp.uint32(0x9E3779B9) | jnp.uint32(1)))
    return unit_interval(x)


def _st_embed_impl(y, E, E_mm, idx):
    return E[idx]


def _make_st_embed():
    """Straight-through embedding of one-hot samples: the forward is a row gather (no
    (tokens x vocab) @ (vocab x d) product); the gradient is the one y @ E would get,
    computed with ``E_mm`` (E itself, or its bfloat16 copy)."""
    import jax
    import jax.numpy as jnp
    f = jax.custom_vjp(_st_embed_impl)

    def fwd(y, E, E_mm, idx):
        return E[idx], (E, E_mm, idx)

    def bwd(res, g):
        E, E_mm, idx = res
        # the cotangents of E and E_mm are unused and compiled away
        return mm(g, E_mm.T).astype(g.dtype), jnp.zeros_like(E), jnp.zeros_like(E_mm), None
    f.defvjp(fwd, bwd)
    return f


def st_embed(y, params, idx):
    """Straight-through embedding rows of ``idx`` with the gradient of y @ E."""
    global _ST
    if _ST is None:
        _ST = _make_st_embed()
    return _ST(y, params["embed"], embed_matrix(params), idx)


_ST = None


_COMPILED: dict = {}     # (model, canonical target, shape settings) -> shared jitted code


def shared(key, build):
    """The jitted function for ``key``, built once: targets that differ only in their
    indices (see ``jaxfwd.canonical``) share one compilation.  The model object is part
    of each key and held by the entry, so a key never outlives its model."""
    if key not in _COMPILED:
        if len(_COMPILED) >= 64:                         # bounded: drop the oldest
            _COMPILED.pop(next(iter(_COMPILED)))
        _COMPILED[key] = build()
    return _COMPILED[key][0]


def _core_objective(jm: JaxModel, canon, *, pre, suf, n: int, hard: bool, fluency: bool,
                    directions, simplex: bool = False):
    """objective(params, theta, noise, tau, lam, cap, bias, idx) for a canonical target.
    ``simplex``: theta is a distribution p per position (PGD's parameterization), the hard
    rows drawn from p by Gumbel-max, the straight-through gradient to p (tau unused)."""
    import jax
    import jax.numpy as jnp
    sites = frozenset(canon.sites())
    start = len(pre)
    spec, inv, scale = jm.spec, jm.inv_freq, jm.rope_scale

    def objective(params, theta, noise, tau, lam, cap, bias, idx):
        E = params["embed"]
        g = -jnp.log(-jnp.log(jnp.clip(noise, 1e-10, 1.0)))
        if simplex:                                # tok ~ Categorical(p): Gumbel-max
            soft = theta
            tok = jnp.argmax(log_support(theta) + bias + g, -1)
        else:
            soft = jax.nn.softmax((theta + bias + g) / tau, axis=-1)
            tok = jnp.argmax(soft, -1)             # the hard sample (scored exactly if hard)
        if hard or simplex:
            emb = st_embed(soft, params, tok)      # forward: a gather; backward: g @ E.T
            y = jax.nn.one_hot(tok, soft.shape[-1], dtype=soft.dtype) + soft \
                - jax.lax.stop_gradient(soft)
        else:
            y = soft
            emb = mm(y, embed_matrix(params))
        B = theta.shape[0]
        if suf:
            emb = jnp.concatenate(
                [emb, jnp.broadcast_to(E[jnp.asarray(suf)][None], (B, len(suf), E.shape[1]))], 1)
        # BOS + prefix run once (batch 1); the rows attend to their keys and values
        caps, logits = forward_after(spec, params, inv, scale, E[jnp.asarray(pre)][None], emb,
                                     sites, (start - 1, start - 1 + n) if fluency else False)
        act = evaluate(canon, caps, jm, directions, (start, start + n), indices=idx)
        if fluency:
            logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # (as torch does)
            xe = -(y * logp).sum(-1).mean(-1)
            score = combine(act, xe, lam, cap)
        else:
            xe = jnp.full_like(act, jnp.nan)
            score = act
        return -score.sum(), (score, act, xe, tok)
    return objective


def _arguments(target, mask, lam, cap):
    import jax.numpy as jnp
    canon, idx = canonical(target)
    lam, cap = np.asarray(lam, np.float32), np.asarray(cap, np.float32)
    fluency = bool(np.any(lam > 0) or np.any(np.isfinite(cap)))
    bias = jnp.where(jnp.asarray(np.asarray(mask)), 0.0, -1e9)
    return canon, fluency, (jnp.asarray(lam), jnp.asarray(cap), bias, jnp.asarray(idx))


def make_objective(jm: JaxModel, target, mask, lam, cap, *, prefix_ids, suffix_ids, n: int,
                   hard: bool, directions=None):
    """objective(params, theta, noise, tau) -> (loss, (score, act, xe, hard tokens)) for
    uniform noise."""
    canon, fluency, extra = _arguments(target, mask, lam, cap)
    core = _core_objective(jm, canon, pre=tuple(prefix_ids), suf=tuple(suffix_ids), n=n,
                           hard=hard, fluency=fluency, directions=directions)
    return lambda params, theta, noise, tau: core(params, theta, noise, tau, *extra)


def make_step(jm: JaxModel, target, mask, lam, cap, *, prefix_ids, suffix_ids, n: int, hard: bool,
              lr: float, directions=None, clip: float | None = None, simplex: bool = False):
    """(jitted step, optimizer init).  The optimizer is an optax chain: optional global-norm
    clipping, then Adam.  The compiled step is shared by targets with the same canonical
    form; lambda, caps, the vocabulary mask and the target's indices are its arguments.
    ``simplex``: theta is a distribution per position, projected back onto the simplex
    after each update (``project_simplex``)."""
    import jax
    import optax
    canon, fluency, extra = _arguments(target, mask, lam, cap)
    pre, suf = tuple(prefix_ids), tuple(suffix_ids)
    opt = optax.chain(*([optax.clip_by_global_norm(clip)] if clip else []), optax.adam(lr))

    def build():
        objective = _core_objective(jm, canon, pre=pre, suf=suf, n=n, hard=hard,
                                    fluency=fluency, directions=directions, simplex=simplex)

        @jax.jit
        def step(params, theta, opt_state, key, tau, lam, cap, bias, idx):
            noise = hash_uniform(key, theta.shape)
            (_, (score, act, xe, tok)), grad = jax.value_and_grad(
                objective, argnums=1, has_aux=True)(params, theta, noise, tau, lam, cap, bias, idx)
            updates, opt_state = opt.update(grad, opt_state, theta)
            theta = jax.numpy.asarray(theta) + updates
            if simplex:
                theta = project_simplex(theta, bias)
            return theta, opt_state, act, xe, tok
        return step, jm, directions
    dirs_key = tuple(sorted((directions or {}).keys()))
    core = shared(("step", id(jm), canon, pre, suf, n, hard, fluency, float(lr), clip, dirs_key,
                   simplex), build)

    def step(params, theta, opt_state, key, tau):
        return core(params, theta, opt_state, key, tau, *extra)
    step._cache_size = core._cache_size       # one entry per compiled shape
    step.compiled = core
    return step, opt.init


def log_support(p):
    """log p, with -1e9 where p is 0 (the tokens the projection left out)."""
    import jax.numpy as jnp
    return jnp.where(p > 0, jnp.log(jnp.maximum(p, 1e-30)), -1e9)


def project_simplex(v, bias, max_iter: int = 100):
    """The Euclidean projection of each row of ``v`` (..., V) onto the probability simplex
    over the tokens where ``bias`` is 0 (others 0): max(v - t, 0) with the t that makes it
    sum to 1, found by Michelot's fixed point t <- (sum of the entries above t - 1) /
    (their count) from the lower bound max(v) - 1: t rises to the threshold and stops
    there, exactly, once the set above it stops shrinking (no sort, so it compiles to a few
    masked sums; ``max_iter`` only bounds a loop that float rounding keeps alive)."""
    import jax
    import jax.numpy as jnp
    v = jnp.where(bias == 0, v.astype(jnp.float32), -jnp.inf)

    def update(t):
        above = v > t
        return (jnp.where(above, v, 0.0).sum(-1, keepdims=True) - 1) / above.sum(-1, keepdims=True)

    def body(state):
        t, _, i = state
        new = update(t)
        return new, jnp.any(new > t), i + 1

    t, _, _ = jax.lax.while_loop(lambda st: st[1] & (st[2] < max_iter), body,
                                 (v.max(-1, keepdims=True) - 1, jnp.bool_(True), 0))
    return jnp.maximum(v - t, 0.0)


def relax_jax(handle, target, theta0, mask, lam, cap, *, steps: int, seconds: float | None,
              lr: float, tau0: float, tau1: float, hard: bool, seed: int, prefix_ids, suffix_ids,
              on_step=None, precision: str = "fp32", patience: int = 0, init_scale: float = 3.0,
              simplex: bool = False):
    """The relaxation loop on the JAX backend.  theta0: (B, n, V) torch tensor.  Returns
    (final theta as a torch tensor, RelaxTrace).  ``precision`` as in ``to_jax``; hard
    samples and stall resets as in the torch loop (``HardReadout``).  ``simplex``: PGD's
    parameterization as in the torch loop (p starts at one-hot(theta0's argmax), a reset
    row at one-hot(its best), theta comes back as log p)."""
    import jax
    import jax.numpy as jnp
    import torch

    from featviz.backends.jax.forward import to_jax
    jm = to_jax(handle, precision)
    n = theta0.shape[1]
    step, init = make_step(jm, target, mask.cpu().numpy(), lam.cpu().numpy(), cap.cpu().numpy(),
                           prefix_ids=prefix_ids, suffix_ids=suffix_ids, n=n, hard=hard, lr=lr,
                           directions=directions_for(target, handle), simplex=simplex)
    theta = jnp.asarray(theta0.cpu().numpy())
    if simplex:
        bias = np.where(mask.cpu().numpy(), 0.0, -1e9).astype(np.float32)
        theta = jax.nn.one_hot((theta + bias).argmax(-1), theta.shape[-1], dtype=jnp.float32)
        init_scale = 1.0
    state = init(theta)
    t0 = time.perf_counter()
    trace = RelaxTrace(0, 0.0, [], [])
    fluency = needs_fluency(lam, cap)
    readout = HardReadout(lam, cap, patience, trace) if hard else None
    for i, tau in schedule(steps, seconds, tau0, tau1):
        theta, state, act, xe, tok = step(jm.params, theta, state, np.uint32(step_key(seed, i)),
                                          jnp.float32(tau))
        if readout is not None:
            stalled = readout.see(torch.from_numpy(np.array(tok)).long(),
                                  torch.from_numpy(np.array(act)),
                                  torch.from_numpy(np.array(xe)) if fluency else None)
            if stalled is not None:
                theta, state = reset_rows(theta, state, stalled.numpy(),
                                          readout.best_ids.numpy(), init_scale)
        trace.steps = i + 1
        if i % 10 == 0:
            trace.soft_act.append(float(act.mean()))
            x = float(xe.mean())
            trace.soft_xe.append(x if math.isfinite(x) else math.nan)
        if on_step is not None:           # theta crosses to torch (on the model's device)
            on_step(i, torch.from_numpy(np.array(theta)).to(handle.device)  # only when used
                    if i % 10 == 9 else None)
    trace.seconds = time.perf_counter() - t0
    if simplex:                                        # log p, -1e9 off the support
        theta = log_support(theta)
    return torch.from_numpy(np.array(theta)), trace, step


def reset_rows(theta, opt_state, rows: np.ndarray, best: np.ndarray, scale: float):
    """Restart ``rows`` of theta from ``scale`` * one-hot(their ``best`` ids), with every
    optimizer moment of theta's shape cleared on those rows (Adam's mu and nu)."""
    import jax
    import jax.numpy as jnp
    idx = np.nonzero(rows)[0]
    fresh = jax.nn.one_hot(jnp.asarray(best[idx]), theta.shape[-1], dtype=theta.dtype) * scale
    theta = theta.at[idx].set(fresh)
    opt_state = jax.tree_util.tree_map(
        lambda a: a.at[idx].set(0) if getattr(a, "shape", None) == theta.shape else a, opt_state)
    return theta, opt_state


class JaxRelaxer:
    """The Relaxer interface on JAX (see ``backends.choose.relaxer``): one jitted step per
    canonical target, Gumbel noise drawn inside it from (seed, restart, step)."""

    def __init__(self, handle, target, mask, tokens, settings: RelaxSettings):
        self.handle, self.target, self.mask, self.tokens = handle, target, mask, tokens
        self.settings = settings

    def __call__(self, theta, lam, cap, *, seconds, restart: int, on_step):
        h, st = self.handle, self.settings
        if st.lm_topk:
            raise FeatvizError("lm_topk runs on the torch relaxation only; use --backend torch "
                               "or lm_topk 0")
        if st.sparse_k:
            raise FeatvizError("sparse_k runs on the torch relaxation only; use --backend torch "
                               "or sparse_k 0")
        theta, trace, _ = relax_jax(
            h, self.target, theta, self.mask, lam, cap, steps=st.steps, seconds=seconds,
            lr=st.lr, tau0=st.tau0, tau1=st.tau1, hard=st.hard, seed=st.seed * 1009 + restart,
            prefix_ids=[h.bos_id] + list(self.tokens.prefix),
            suffix_ids=list(self.tokens.suffix), on_step=on_step, precision=st.precision,
            patience=st.patience, init_scale=st.init_scale, simplex=st.simplex)
        return theta.to(h.device), trace

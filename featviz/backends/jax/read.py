"""Reading targets in JAX: the same kind table (``targets.kinds``) and reduction plans as
torch, on JAX arrays; ``canonical`` lets targets that differ only in their index share
one compiled program."""
from __future__ import annotations

import numpy as np

from featviz.backends.jax.forward import JaxModel
from featviz.targets.kinds import KEY_KINDS, KINDS, Ops, Read, reduce_with


def per_position(target, caps, jm: JaxModel, direction=None, indices=None):
    """(B, T) weighted per-position values of a target (same semantics as Atom.per_position).
    ``indices``: the atoms' indices as a traced array (see ``canonical``), else their own."""
    from featviz.targets.core import PerRow
    if isinstance(target, PerRow):
        import jax.numpy as jnp
        vals = jnp.stack([per_position(t, caps, jm, direction, ix)
                          for t, ix in _split(target, indices)])
        return vals[np.asarray(target.rows), np.arange(len(target.rows))]
    total = 0.0
    for j, (w, a) in enumerate(target.terms()):
        total = total + w * _atom_values(a, caps, jm, direction,
                                         None if indices is None else indices[j])
    return total


def _split(target, indices):
    """(sub-target, its slice of indices) for each sub-target of a PerRow."""
    off = 0
    for t in target.targets:
        k = len(t.terms())
        yield t, (None if indices is None else indices[off:off + k])
        off += k


def canonical(target):
    """(the target with every atom's index set to 0, the indices as an int32 array in
    ``terms`` order).  Targets that differ only in their indices (neurons or heads of one
    layer and kind) have the same canonical form, so code compiled for one serves all
    when the indices are passed as an argument."""
    from dataclasses import replace

    from featviz.targets.core import Atom, PerRow, Sum
    if isinstance(target, PerRow):
        parts = [canonical(t) for t in target.targets]
        return (PerRow(tuple(c for c, _ in parts), target.rows),
                np.concatenate([ix for _, ix in parts]).astype(np.int32))
    terms = target.terms()
    idx = np.array([a.index if a.index is not None else 0 for _, a in terms], np.int32)
    canon = tuple((w, replace(a, index=0) if a.index is not None else a) for w, a in terms)
    if isinstance(target, Atom):
        return canon[0][1], idx
    return Sum(canon), idx


def jax_ops():
    """The array operations of ``targets.kinds`` in JAX."""
    import jax
    import jax.numpy as jnp
    return Ops(norm=lambda v: jnp.linalg.norm(v, axis=-1),
               zeros=lambda shape, like: jnp.zeros(shape, like.dtype),
               max=lambda v: v.max(-1), mean=lambda v: v.mean(-1),
               relu=jax.nn.relu, topk_relu=_topk_relu, affine=lambda x, w, b: x @ w + b)


def _topk_relu(v, k: int):
    import jax
    import jax.numpy as jnp
    vals, idx = jax.lax.top_k(v, k)
    return jnp.put_along_axis(jnp.zeros_like(v), idx, jax.nn.relu(vals), axis=-1, inplace=False)


def _atom_values(a, caps, jm, direction, index=None):
    """An atom's (B, T) values, read through the kind table both backends share."""
    x = caps[a.site]
    key = a.key_index(x.shape[-1]) if a.kind in KEY_KINDS else None
    d = direction[a.file] if a.file is not None and direction else None
    sae = (a.sae_spec, d) if a.kind == "sae" else None
    r = Read(a.index if index is None else index, key, None if sae else d, jm.spec.n_heads,
             jm.spec.head_dim, sae, a.dim)
    return KINDS[a.kind].read(x, r, jax_ops())


def reduce(a, values, span=None):
    """Atom.reduce on JAX arrays (the same plan, from ``Atom.reduce_plan``)."""
    how, i = a.reduce_plan(values.shape[-1], span)
    return reduce_with(how, i, values, jax_ops())


def evaluate(target, caps, jm, directions=None, span=None, indices=None):
    """Reduced value per sequence (B,); ``span`` as in ``Target.evaluate``, ``indices`` as
    in ``per_position``."""
    from featviz.targets.core import PerRow
    if isinstance(target, PerRow):          # row r reads targets[rows[r]]
        import jax.numpy as jnp
        vals = jnp.stack([evaluate(t, caps, jm, directions, span, ix)
                          for t, ix in _split(target, indices)])
        return vals[np.asarray(target.rows), np.arange(len(target.rows))]
    total = 0.0
    for j, (w, a) in enumerate(target.terms()):
        v = _atom_values(a, caps, jm, directions, None if indices is None else indices[j])
        total = total + w * reduce(a, v, span)
    return total


def directions_for(target, handle) -> dict:
    """JAX arrays of the residual directions and SAE weights a target reads (by file path)."""
    import jax.numpy as jnp
    out = {}
    for _, a in target.terms():
        if a.kind == "sae":
            out[a.file] = {k: jnp.asarray(v) for k, v in a.sae_weights_np().items()}
        elif a.file is not None:
            out[a.file] = jnp.asarray(a.direction(handle).float().numpy())
    return out

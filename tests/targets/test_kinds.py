"""The kind table: one reading per kind, the same in torch and JAX."""
import numpy as np
import pytest
import torch

import featviz
from featviz.model.forward import run
from featviz.targets.kinds import KINDS, TORCH_OPS, Read, head_norms, reduce_with


def test_head_norms_is_the_norm_of_each_head():
    x = torch.randn(2, 5, 3 * 4)
    want = torch.stack([x[..., h * 4:(h + 1) * 4].norm(dim=-1) for h in range(3)], -1)
    torch.testing.assert_close(head_norms(x, 3, 4), want)


def test_every_kind_reads_the_documented_slice(llama):
    ids = torch.tensor([[llama.bos_id, 5, 9, 11, 7]])
    for spec in ("mlp:1:3", "head:1:2", "attn:1:1:2", "resid:1:4"):
        a = featviz.parse_target(spec, llama)
        caps, _ = run(llama, a.sites(), input_ids=ids)
        x = caps[a.site]
        got = a.per_position(caps, llama)
        want = {"mlp": lambda: x[..., 3], "resid": lambda: x[..., 4],
                "attn": lambda: x[:, 1, :, 2],
                "head": lambda: x.reshape(1, 5, llama.n_heads, llama.head_dim)[:, :, 2].norm(dim=-1)}
        torch.testing.assert_close(got, want[a.kind]())


def test_a_key_the_causal_mask_hides_reads_zero():
    x = torch.rand(2, 3, 4, 4)                     # (batch, heads, queries, keys present)
    out = KINDS["attn"].read(x, Read(index=1, key=6), TORCH_OPS)
    assert out.shape == (2, 4) and not out.any()


def test_torch_and_jax_read_through_the_same_table():
    jnp = pytest.importorskip("jax.numpy")
    from featviz.backends.jax.read import jax_ops
    x = np.random.default_rng(0).standard_normal((2, 5, 12)).astype(np.float32)
    for kind, r in (("mlp", Read(index=3)), ("head", Read(index=1, n_heads=3, head_dim=4)),
                    ("resid", Read(index=None, direction=np.ones(12, np.float32) / 12 ** 0.5))):
        rt = Read(r.index, r.key, None if r.direction is None else torch.from_numpy(r.direction),
                  r.n_heads, r.head_dim)
        t = KINDS[kind].read(torch.from_numpy(x), rt, TORCH_OPS).numpy()
        j = np.asarray(KINDS[kind].read(jnp.asarray(x), r, jax_ops()))
        np.testing.assert_allclose(t, j, rtol=1e-5, atol=1e-6)
    v = np.random.default_rng(1).standard_normal((2, 6)).astype(np.float32)
    for how, i in (("at", 2), ("max", (1, 4)), ("mean", (1, 6))):
        np.testing.assert_allclose(reduce_with(how, i, torch.from_numpy(v)).numpy(),
                                   np.asarray(reduce_with(how, i, jnp.asarray(v), jax_ops())),
                                   rtol=1e-6)

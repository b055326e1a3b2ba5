"""Every target kind and reduction the grammar accepts dreams, on both backends, and the
reported value is the target's exact reading on the reported text."""
import numpy as np
import pytest
import torch

import featviz
from featviz.search.api import dream
from featviz.search.config import DreamConfig
from featviz.targets.read import evaluate_ids

# beams on (the LM-guided init evaluates the target on one-token KV-cache steps)
CFG = dict(length=5, batch=4, steps=4, swap_iters=2, children=4, k_grad=8, k_lm=8,
           hard_samples=2, caps=(5.0,), init_samples=8, beam_lams=(0.1,), beam_width=3,
           beam_expand=6)

KINDS = ["mlp:1:3", "head:2:1", "attn:1:2:2", "attn:2:0:-2", "resid:1:5", "resid:2:FILE"]
REDUCTIONS = ["", "@max", "@mean", "@3", "@-2", "@0"]
ALL = [(k, r) for k in KINDS for r in REDUCTIONS]
# every kind once and every reduction once (a diagonal), and a second, shifted one
COVER = [(k, REDUCTIONS[i]) for i, k in enumerate(KINDS)]
COVER2 = COVER + [(k, REDUCTIONS[(i + 3) % len(REDUCTIONS)]) for i, k in enumerate(KINDS)]


@pytest.fixture(scope="module")
def direction_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("dir") / "d.npy"
    np.save(p, np.random.default_rng(0).normal(size=32).astype(np.float32))
    return str(p)


def _spec(kind, red, direction_file):
    return kind.replace("FILE", direction_file) + red


def _check(h, spec, res):
    t = featviz.parse_target(spec, h)
    assert res.best is not None, spec
    for c in [res.best] + ([res.best_fluent] if res.best_fluent else []):
        vals, xe = evaluate_ids(h, [t], torch.tensor([c.token_ids]), with_xe=True)
        assert float(vals[0, 0]) == pytest.approx(c.activation, abs=1e-4), spec
        assert float(xe[0]) == pytest.approx(c.xe, abs=1e-4), spec


@pytest.mark.parametrize("kind,red", ALL)
def test_every_kind_and_reduction_dreams_on_torch(llama, kind, red, direction_file):
    spec = _spec(kind, red, direction_file)
    res = dream(llama, spec, DreamConfig(**CFG), progress=False)
    _check(llama, spec, res)


@pytest.mark.parametrize("kind,red", COVER2)
def test_every_kind_and_reduction_dreams_on_gpt2(gpt2, kind, red, direction_file):
    spec = _spec(kind, red, direction_file)
    res = dream(gpt2, spec, DreamConfig(**CFG), progress=False)
    _check(gpt2, spec, res)


# each JAX target form compiles its own programs (seconds each), so the JAX backend runs
# the diagonal (every kind and every reduction at least once) as one dream_many: one
# compiled joint relaxation, and each target's own swap scoring and report (33 s against
# 53 s for six separate dreams here)
def test_every_kind_and_reduction_dreams_on_jax(llama, direction_file):
    from featviz.search.api import dream_many
    specs = [_spec(k, r, direction_file) for k, r in COVER]
    results = dream_many(llama, specs, DreamConfig(**CFG, backend="jax"), progress=False)
    assert [r.target for r in results] == [str(featviz.parse_target(s, llama)) for s in specs]
    for spec, res in zip(specs, results):
        assert res.stats["backend"] == "jax", spec
        _check(llama, spec, res)


def test_a_position_outside_the_dream_is_a_clear_error_before_the_search(llama):
    with pytest.raises(featviz.FeatvizError, match="outside a sequence of 6 tokens"):
        dream(llama, "mlp:1:3@9", DreamConfig(**CFG), progress=False)
    with pytest.raises(featviz.FeatvizError, match="outside a sequence of 6 tokens"):
        dream(llama, "attn:1:2:7", DreamConfig(**CFG), progress=False)


def test_beam_scores_a_fixed_position_target_by_its_value_there(llama):
    """The beam's reported activation for @I and attention keys is the full sequence's."""
    from featviz.model.tokens import Tokens
    from featviz.model.vocab import readable_mask
    from featviz.search.beam import beam_search
    mask = readable_mask(llama)
    tok = Tokens(llama, [], [])
    for spec in ("mlp:1:3@2", "attn:1:2:2", "attn:2:0:-2", "head:2:1@mean", "mlp:2:4@max"):
        t = featviz.parse_target(spec, llama)
        ids, act, _ = beam_search(llama, t, tok, mask, 5, beams=3, expand=5, lam=0.1)
        want, _ = evaluate_ids(llama, [t], ids)
        np.testing.assert_allclose(act.numpy(), want[0].numpy(), atol=1e-4, err_msg=spec)

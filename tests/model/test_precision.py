"""The search's arithmetic: bfloat16 weight copies give exactly what autocast gives, and
the float32 model is back in place after."""
import pytest
import torch
from conftest import tiny_gpt2, tiny_llama

import featviz
from featviz.model.forward import run
from featviz.model.precision import (
    SearchArithmetic,
    as_loaded,
    copy_bytes,
    product_embedding,
)
from featviz.search.config import DreamConfig


def _logits(h, ids, ctx):
    with torch.no_grad(), ctx:
        caps, logits = run(h, [("mlp.hook_post", 1)], input_ids=ids, need_logits=True)
    return caps[("mlp.hook_post", 1)].float(), logits.float()


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])
def test_copies_give_what_autocast_gives_and_go_back(tokenizer, make):
    h = featviz.wrap_model(make(tokenizer), tokenizer)
    before = {n: p for n, p in h.model.named_parameters()}
    tied = h.model.lm_head.weight is h.embedding
    ids = torch.randint(2, len(tokenizer), (3, 9), generator=torch.Generator().manual_seed(0))
    ref = _logits(h, ids, torch.autocast("cpu", dtype=torch.bfloat16))
    arith = SearchArithmetic(h, bf16=True)
    for _ in range(2):                             # the second entry reuses the copies
        got = _logits(h, ids, arith)
        assert all(torch.equal(a, b) for a, b in zip(got, ref))
    with arith:
        with arith:                                # entries nest
            assert h.model.lm_head.weight.dtype == torch.bfloat16
            assert product_embedding(h).dtype == torch.bfloat16
            with as_loaded(h.model):               # e.g. the JAX conversion reads float32
                assert h.model.lm_head.weight.dtype == torch.float32
            assert h.model.lm_head.weight.dtype == torch.bfloat16
        assert h.model.lm_head.weight.dtype == torch.bfloat16
    after = {n: p for n, p in h.model.named_parameters()}
    assert before.keys() == after.keys() and all(before[n] is after[n] for n in before)
    assert (h.model.lm_head.weight is h.embedding) == tied
    assert product_embedding(h) is h.embedding and h.embedding.dtype == torch.float32
    assert torch.equal(_logits(h, ids, torch.no_grad())[1],
                       _logits(featviz.wrap_model(make(tokenizer), tokenizer), ids,
                               torch.no_grad())[1])
    mats = {id(p): p.numel() for n, p in h.model.named_parameters()   # a tied matrix once
            if "norm" not in n and "ln_" not in n and "wpe" not in n}
    assert copy_bytes(h) == 2 * sum(mats.values())


def test_an_error_inside_puts_the_float32_weights_back(tokenizer):
    h = featviz.wrap_model(tiny_llama(tokenizer), tokenizer)
    w = h.model.lm_head.weight
    with pytest.raises(RuntimeError, match="boom"):
        with SearchArithmetic(h, bf16=True):
            raise RuntimeError("boom")
    assert h.model.lm_head.weight is w and not torch.is_autocast_enabled("cpu")


def test_a_weight_written_since_gets_a_fresh_copy(tokenizer):
    h = featviz.wrap_model(tiny_llama(tokenizer), tokenizer)
    ids = torch.tensor([[0, 5, 6, 7, 8]])
    arith = SearchArithmetic(h, bf16=True)
    _logits(h, ids, arith)
    with torch.no_grad():
        h.model.lm_head.weight.mul_(2.0)           # e.g. a notebook editing the model
    ref = _logits(h, ids, torch.autocast("cpu", dtype=torch.bfloat16))
    assert torch.equal(_logits(h, ids, arith)[1], ref[1])


def test_fp32_arithmetic_leaves_the_model_alone(tokenizer):
    h = featviz.wrap_model(tiny_llama(tokenizer), tokenizer)
    w = h.model.lm_head.weight
    with SearchArithmetic(h, bf16=False):
        assert h.model.lm_head.weight is w and not torch.is_autocast_enabled("cpu")


def test_a_dream_is_the_same_with_and_without_the_copies(tokenizer, monkeypatch):
    import featviz.search.target_search as ts
    h = featviz.wrap_model(tiny_llama(tokenizer), tokenizer)
    t = featviz.parse_target("mlp:1:3", h)
    cfg = DreamConfig(length=4, steps=4, swap_iters=2, seed=1, precision="bf16", vocab="all",
                      init_samples=8, beam_lams=(0.1,), beam_width=2, beam_expand=4)
    with_copies = featviz.dream(h, t, cfg, progress=False)
    monkeypatch.setattr(ts, "weight_copies_fit", lambda handle, cfg: False)
    without = featviz.dream(h, t, cfg, progress=False)
    key = lambda r: [(c.text, c.activation, c.xe) for c in r.frontier]   # noqa: E731
    assert key(with_copies) == key(without)

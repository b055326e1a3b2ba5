"""The real embedded model: loading, facts, and one neuron checked against the weights."""
import pytest
import torch
from reference import reference

from featviz import parse_target
from featviz.model.forward import with_bos
from featviz.targets.read import read_text

pytestmark = pytest.mark.slow


def test_embedded_facts(smollm):
    assert (smollm.arch, smollm.n_layers, smollm.d_model, smollm.d_mlp) == ("llama", 30, 576, 1536)
    assert (smollm.n_heads, smollm.n_kv_heads, smollm.vocab_size) == (9, 3, 49152)
    assert smollm.embedding.shape == (49152, 576)
    assert not any(p.requires_grad for p in smollm.model.parameters())
    assert "silu" in smollm.mlp_activation


def test_mlp_12_345_matches_weights(smollm):
    text = "The Eiffel Tower is a wrought-iron lattice tower in Paris."
    t = parse_target("mlp:12:345", smollm)
    r = read_text(smollm, [t], text)
    ids = with_bos(smollm, smollm.encode(text))[0]
    ref = reference(smollm, 12, ids)["mlp_post"][:, 345]
    assert torch.allclose(torch.tensor(r.values["mlp:12:345"]), ref, atol=1e-5)
    assert abs(r.reduced["mlp:12:345"] - float(ref[-1])) < 1e-5

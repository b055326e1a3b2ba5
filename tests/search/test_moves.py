"""The discrete moves of the dreaming engine, each checked against exact evaluation."""
import pytest
import torch

from featviz import parse_target
from featviz.backends.torch.score import evaluate, onehot_grads
from featviz.model.tokens import Tokens
from featviz.model.vocab import readable_mask
from featviz.search.archive import Archive
from featviz.search.beam import beam_search
from featviz.search.moves import crossover, propose, rotations, select_index, sweep_last


def _ids(h, rows=3, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    allowed = readable_mask(h).nonzero().flatten()
    return allowed[torch.randint(0, len(allowed), (rows, n), generator=g)]


def test_sweep_last_is_exact(tiny):
    t = parse_target("mlp:1:5", tiny)
    tok = Tokens(tiny, [], [])
    ids = _ids(tiny)
    lam = torch.zeros(3)
    cap = torch.full((3,), 6.0)
    grad, lm = onehot_grads(tok, t, ids, lam, cap)
    kids, act, dxe = sweep_last(tok, t, ids, grad, lm, readable_mask(tiny), 10)
    a_par, x_par, _ = evaluate(tok, t, ids)
    a, x, _ = evaluate(tok, t, kids)
    assert torch.allclose(act, a, atol=1e-5)
    assert torch.allclose(x_par.repeat_interleave(10) + dxe, x, atol=1e-5)
    assert torch.equal(kids[:, :-1], ids.repeat_interleave(10, 0)[:, :-1])


def test_onehot_grads_match_finite_difference(llama):
    t = parse_target("mlp:2:3", llama)
    tok = Tokens(llama, [], [])
    ids = _ids(llama, rows=1)
    lam, cap = torch.zeros(1), torch.full((1,), float("inf"))
    grad, lm = onehot_grads(tok, t, ids, lam, cap)
    assert grad.shape == (1, 6, llama.vocab_size) and lm.shape == grad.shape
    # the LM logits are the model's next-token logits at each optimised position
    from featviz.model.forward import run
    _, logits = run(llama, set(), input_ids=tok.full(ids), need_logits=True)
    assert torch.allclose(lm, logits[:, :6], atol=1e-5)


def test_propose_changes_one_token(llama):
    ids = _ids(llama)
    V = llama.vocab_size
    g = torch.Generator().manual_seed(0)
    kids = propose(ids, torch.randn(3, 6, V), torch.randn(3, 6, V), readable_mask(llama), 5, 4, 4,
                   0.5, g)
    assert kids.shape == (15, 6)
    diff = (kids != ids.repeat_interleave(5, 0)).sum(1)
    assert (diff <= 1).all()
    assert readable_mask(llama)[kids].all()


def test_propose_takes_a_share_per_parent(llama):
    """Per-parent lm_share: a parent with share 0 gets gradient swaps only, one with
    share 1 only the model's own top tokens (the two top-k sets are made disjoint)."""
    ids = _ids(llama, rows=2)
    V = llama.vocab_size
    mask = readable_mask(llama)
    allowed = mask.nonzero().flatten()
    G, L = allowed[:4], allowed[4:8]
    grad = torch.full((2, 6, V), -10.0)
    grad[..., G] = 10.0
    lm = torch.full((2, 6, V), -10.0)
    lm[..., L] = 10.0
    kids = propose(ids, grad, lm, mask, 40, 4, 4, torch.tensor([0.0, 1.0]),
                   torch.Generator().manual_seed(0))
    for parent, pool in ((0, G), (1, L)):
        part = kids[parent * 40:(parent + 1) * 40]
        new = part[part != ids[parent].expand_as(part)]
        assert len(new) and torch.isin(new, pool).all()


def test_propose_draws_a_share_from_the_relaxation(llama):
    """With relax_share 1 every child takes one of the relaxation's top tokens, at a
    position where the parent's token is not among them; with 0 none does."""
    ids = _ids(llama, rows=2)
    V = llama.vocab_size
    mask = readable_mask(llama)
    allowed = mask.nonzero().flatten()
    G, L, R = allowed[:4], allowed[4:8], allowed[8:11]
    grad = torch.full((2, 6, V), -10.0)
    grad[..., G] = 10.0
    lm = torch.full((2, 6, V), -10.0)
    lm[..., L] = 10.0
    top = R.expand(2, 6, 3).clone()
    ids[0, 2] = R[0]                       # row 0 already agrees with the relaxation at 2
    kids = propose(ids, grad, lm, mask, 40, 4, 4, 0.5, torch.Generator().manual_seed(0),
                   relax_top=top, relax_share=1.0)
    changed = kids != ids.repeat_interleave(40, 0)
    assert (changed.sum(1) <= 1).all() and changed.any()
    assert torch.isin(kids[changed], R).all()
    assert not changed[:40, 2].any()
    none = propose(ids, grad, lm, mask, 40, 4, 4, 0.5, torch.Generator().manual_seed(0),
                   relax_top=top, relax_share=0.0)
    assert not torch.isin(none[none != ids.repeat_interleave(40, 0)], R).any()


def test_rotation_moves_peak_to_end():
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    per = torch.tensor([[0.0, 9.0, 0.0, 0.0, 1.0]])
    assert rotations(ids, per, 2.0, 4).tolist() == [[3, 4, 5, 1, 2]]
    assert rotations(ids, per, 10.0, 4).shape[0] == 0


def test_select_index_keeps_rows_apart():
    pool = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 2], [5, 6, 7, 8], [5, 6, 0, 0]])
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0]] * 3)       # three rows, same objective
    assert select_index(scores, pool).tolist() == [0, 0, 0]
    # distance 2: row 1 skips [1,1,1,2] (one token from row 0's pick); distance 3: row 2
    # finds nothing three tokens from both picks and takes the farthest, [5,6,0,0] (two
    # from [5,6,7,8]), not a copy of row 0's pick
    assert select_index(scores, pool, 2).tolist() == [0, 2, 3]
    assert select_index(scores, pool, 3).tolist() == [0, 2, 3]
    # more rows than members: a row with only copies left takes its best
    assert select_index(torch.tensor([[4.0, 3.0]] * 3), pool[:2], 2).tolist() == [0, 1, 0]
    assert select_index(scores, pool, 1).tolist() == [0, 1, 2]
    assert select_index(scores[:1], pool, 3).tolist() == [0]


def test_crossover_joins_head_and_tail():
    pop = torch.tensor([[1, 1, 1, 1], [2, 2, 2, 2]])
    act = torch.tensor([5.0, 0.0])
    xe = torch.tensor([9.0, 2.0])
    kids = crossover(pop, act, xe, 6, 3, torch.Generator().manual_seed(0))
    for k in kids.tolist():
        j = k.index(1)
        assert k[:j] == [2] * j and k[j:] == [1] * (4 - j) and 1 <= 4 - j <= 3


@pytest.mark.parametrize("spec,prefix", [("mlp:2:1", ""), ("mlp:0:3", ""), ("head:1:0", "the")])
def test_beam_search_scores_are_exact(tiny, spec, prefix):
    """Candidates run only to the target's layer and the kept beams then through the whole
    model (the cache loses the candidates' partial entries): scores stay exact."""
    t = parse_target(spec, tiny)
    tok = Tokens(tiny, tiny.encode(prefix)[:1] if prefix else [], [])
    ids, act, xe = beam_search(tiny, t, tok, readable_mask(tiny), 5, beams=3, expand=4, lam=0.5)
    a, x, _ = evaluate(tok, t, ids)
    assert ids.shape == (3, 5)
    assert torch.allclose(act, a, atol=1e-5) and torch.allclose(xe, x, atol=1e-5)


def test_archive_frontier():
    ar = Archive()
    ar.add(torch.tensor([[1], [2], [3], [4]]), torch.tensor([1.0, 3.0, 2.0, 5.0]),
           torch.tensor([2.0, 4.0, 5.0, float("inf")]))
    assert [(k, a) for k, a, _ in ar.frontier()] == [((1,), 1.0), ((2,), 3.0)]
    assert ar.best(4.5)[0] == (2,) and ar.best(1.0) is None


def test_novel_keeps_each_parents_first_unseen_draws():
    from featviz.search.moves import novel
    draws = torch.tensor([[1, 1], [1, 2], [1, 1], [1, 3], [1, 4],      # parent 0
                          [2, 1], [1, 2], [2, 2], [2, 3], [2, 4]])     # parent 1
    seen = {(1, 3), (2, 2)}
    # parent 0: [1, 1], [1, 2] (then a repeat, a seen row, and one over its two);
    # parent 1: [1, 2] is parent 0's, [2, 2] was scored: [2, 1], [2, 3]
    assert novel(draws, 2, 2, seen).tolist() == [[1, 1], [1, 2], [2, 1], [2, 3]]
    assert novel(draws, 2, 9, seen).tolist() == [[1, 1], [1, 2], [1, 4], [2, 1], [2, 3],
                                                   [2, 4]]
    assert novel(draws[:0], 0, 2, seen).shape == (0, 2)


@pytest.mark.parametrize("redraw", [0, 1.5, True])
def test_redraw_must_be_a_positive_integer(redraw):
    from featviz import DreamConfig, FeatvizError
    with pytest.raises(FeatvizError, match="redraw must be an integer"):
        DreamConfig(redraw=redraw).check()

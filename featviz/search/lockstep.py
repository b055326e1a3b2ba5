"""Several searches in lockstep: every forward pass one search asks for runs in one batch
with the same pass of the other searches of its group.

A search's stages are generators that yield requests and receive their results
(``act, xe, per = yield Evaluate(ids)``).  ``drive`` runs any number of them: each round
it takes the pending request of every search still running, serves the requests of one
kind together (``Server``: the rows of all targets side by side, each row reading its own
target through ``PerRow``) and sends each search its own part.  A search draws its random
numbers from its own generator and sees only its own rows, so the stage code is the same
for one target or many, and a target's result in a group is what it gets alone, as far as
the device gives a row the same numbers in a larger batch (the tests check this on CPU).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from featviz.backends.torch.score import evaluate, onehot_grads
from featviz.search.beam import beam_search_many
from featviz.search.budget import pass_rows
from featviz.search.init import sample_many
from featviz.search.moves import sweep_last
from featviz.search.verify import verify_jobs
from featviz.targets.core import PerRow


# ---------------------------------------------------------------- the requests
@dataclass
class Evaluate:
    """Exact scores of hard rows -> (activation, xe or None, per-position values)."""
    ids: torch.Tensor
    with_xe: bool = True

    def key(self):
        return ("evaluate", self.with_xe)


@dataclass
class Grads:
    """One-hot gradients of each row's score, and next-token logits -> (grad, lm)."""
    ids: torch.Tensor
    lam: torch.Tensor
    cap: torch.Tensor

    def key(self):
        return ("grads",)


@dataclass
class Sweep:
    """``width`` tokens tried at every row's last position -> (kids, activation, xe delta)."""
    ids: torch.Tensor
    grad: torch.Tensor
    lm: torch.Tensor
    width: int

    def key(self):
        return ("sweep", self.width)


@dataclass
class Sample:
    """``batch`` ancestral samples from the model, from the search's generator -> ids."""
    batch: int

    def key(self):
        return ("sample",)


@dataclass
class Beam:
    """One LM-guided beam search at ``lam`` -> (ids, activation, xe)."""
    lam: float
    sample: bool
    deadline: float | None

    def key(self):
        return ("beam", self.deadline)


@dataclass
class Verify:
    """Float32 verification of re-encoded candidates -> {key: Candidate or None}."""
    keys: list

    def key(self):
        return ("verify",)


# ---------------------------------------------------------------- the driver
# where a request comes within one swap iteration (or the init), which the driver uses to
# keep the searches together: a search that is ahead waits for the ones behind it
RANK = {"sample": 0, "beam": 1, "grads": 2, "sweep": 3, "evaluate": 4, "verify": 6}


def _phase(search, request):
    key = request.key()
    rank = RANK[key[0]] + (1 if key == ("evaluate", True) else 0)
    return (getattr(search, "mark", 0), rank)


def drive(server: "Server", steps) -> list:
    """Run generators ``steps`` [(search, generator)] to the end, batching their requests;
    returns each generator's return value.  Each round serves the pending requests of the
    earliest phase (the search's ``mark``, e.g. its swap iteration, then the request's place
    in an iteration), so searches whose iterations differ (a sweep, two-stage scoring)
    still meet at each pass and a pass serves as many of them as it can."""
    results = [None] * len(steps)
    pending: dict = {}

    def advance(i, value):
        try:
            pending[i] = steps[i][1].send(value)
        except StopIteration as stop:
            results[i] = stop.value
            pending.pop(i, None)

    for i in range(len(steps)):
        advance(i, None)
    while pending:
        phases = {i: _phase(steps[i][0], r) for i, r in pending.items()}
        first = min(phases.values())
        kinds: dict = {}
        for i, request in pending.items():
            if phases[i] == first:
                kinds.setdefault(request.key(), []).append(i)
        for idx in kinds.values():
            outs = server.serve([(steps[i][0], pending[i]) for i in idx])
            for i, out in zip(idx, outs):
                advance(i, out)
    return results


# ---------------------------------------------------------------- serving requests
def _joint(items, rows_of=lambda r: len(r.ids)):
    """The rows of several requests in one batch: (the batch's target, each row reading
    its own search's target through ``PerRow``; each request's row count)."""
    sizes = [rows_of(r) for _, r in items]
    if len(items) == 1:
        return items[0][0].target, sizes
    owners = tuple(j for j, n in enumerate(sizes) for _ in range(n))
    return PerRow(tuple(s.target for s, _ in items), owners), sizes


class Server:
    """Serves a round's requests of one kind in batched passes of at most ``rows`` rows
    (exact scores), ``grad_rows`` (gradients) and ``sweep_rows`` (single-token sweep rows;
    whole searches are packed into these two, a search never spans two passes); see
    ``search.budget.pass_rows``."""

    def __init__(self, handle, tokens, mask, cfg, backend: str):
        self.h, self.tokens, self.mask, self.cfg, self.backend = (handle, tokens, mask, cfg,
                                                                  backend)
        self.rows, self.grad_rows, self.sweep_rows = pass_rows(handle.device)

    def serve(self, items):
        kind = items[0][1].key()[0]
        return getattr(self, kind)(items)

    # -- exact scores --
    def evaluate(self, items):
        if self.backend == "jax":              # jitted per target: served one by one
            return [s.scorer.evaluate(r.ids, r.with_xe) for s, r in items]
        ids = torch.cat([r.ids for _, r in items])
        target, sizes = _joint(items)
        with_xe = items[0][1].with_xe
        acts, xes, pers = [], [], []
        with items[0][0].arithmetic:
            for i in range(0, len(ids), self.rows):
                part = ids[i:i + self.rows]
                rows = target if len(items) == 1 else PerRow(target.targets,
                                                              target.rows[i:i + self.rows])
                a, x, p = evaluate(self.tokens, rows, part, batch_size=len(part),
                                   with_xe=with_xe)
                acts.append(a)
                pers.append(p)
                xes.append(x)
        act, per = torch.cat(acts).split(sizes), torch.cat(pers).split(sizes)
        xe = torch.cat(xes).split(sizes) if with_xe else [None] * len(items)
        return list(zip(act, xe, per))

    def grads(self, items):
        if self.backend == "jax":
            return [s.scorer.onehot_grads(r.ids, r.lam, r.cap) for s, r in items]
        out = []
        for chunk in self._packs(items, self.grad_rows, lambda r: len(r.ids)):
            target, sizes = _joint(chunk)
            with chunk[0][0].arithmetic:
                g, lm = onehot_grads(self.tokens, target, torch.cat([r.ids for _, r in chunk]),
                                     torch.cat([r.lam for _, r in chunk]),
                                     torch.cat([r.cap for _, r in chunk]))
            out += list(zip(g.split(sizes), lm.split(sizes)))
        return out

    def sweep(self, items):
        width = items[0][1].width
        out = []
        for chunk in self._packs(items, self.sweep_rows, lambda r: len(r.ids) * width):
            target, sizes = _joint(chunk, lambda r: len(r.ids) * width)
            with chunk[0][0].arithmetic:
                kids, act, dxe = sweep_last(self.tokens, target,
                                            torch.cat([r.ids for _, r in chunk]),
                                            torch.cat([r.grad for _, r in chunk]),
                                            torch.cat([r.lm for _, r in chunk]), self.mask,
                                            width)
            out += list(zip(kids.split(sizes), act.split(sizes), dxe.split(sizes)))
        return out

    # -- init --
    def sample(self, items):
        return sample_many(self.h, [(r.batch, s.gen) for s, r in items], self.cfg.length,
                           self.mask, self.tokens.prefix)

    def beam(self, items):
        st = self.cfg.start
        with items[0][0].arithmetic:
            return beam_search_many(
                self.h, [(s.target, float(r.lam), s.gen if r.sample else None) for s, r in items],
                self.tokens, self.mask, self.cfg.length, beams=st.beam_width,
                expand=st.beam_expand, deadline=items[0][1].deadline)

    # -- the report --
    def verify(self, items):
        return verify_jobs(self.h, self.tokens, [(s.target, r.keys) for s, r in items],
                           self.cfg.length)

    @staticmethod
    def _packs(items, limit, size):
        """Consecutive runs of whole items whose sizes add up to at most ``limit`` (an item
        larger than that runs alone)."""
        pack, used = [], 0
        for item in items:
            n = size(item[1])
            if pack and used + n > limit:
                yield pack
                pack, used = [], 0
            pack.append(item)
            used += n
        if pack:
            yield pack

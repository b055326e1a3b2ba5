"""The like-for-like corpus figure a synthetic value is compared with (the one definition;
query, gallery, flags and audit all use it)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from featviz.mining.records import TargetExemplars
from featviz.targets.core import Atom
from featviz.targets.kinds import KEY_KINDS


@dataclass
class CorpusReference:
    """The corpus figure a target's synthetic value is divided by: the same quantity, on
    corpus text of the same shape, or None with the reason there is none."""

    value: float | None
    basis: str          # what the value is, or why there is none

    def ratio(self, v: float | None) -> float | None:
        if v is None or self.value is None or not self.value > 0:
            return None
        return v / self.value

    def to_json(self) -> dict:
        return {"value": self.value, "basis": self.basis}


def corpus_reference(ex: "TargetExemplars", target, length: int, prefix: int = 0,
                     suffix: int = 0) -> CorpusReference:
    """The like-for-like corpus figure for ``target`` dreamt as BOS + ``prefix`` fixed
    tokens + ``length`` optimised tokens + ``suffix`` fixed tokens.

    * @last and @max of a neuron, head or residual direction: the max over every corpus
      token, each read with its window's preceding context (the value of the target at
      one token of real text, as the dream's is);
    * @mean: the max over windows of the mean over their first ``length`` tokens (BOS +
      ``length`` tokens of real text: the dream's own shape);
    * @I: the max over windows of the value at position I (BOS + I tokens of real text);
    * attention probabilities, which depend on how many keys the query sees: the value at
      the dream's query position (@last: position ``length``; @max: the max over positions
      1..``length``) of windows cut to the dream's shape; keys counted from the end of the
      sequence have no such figure (the corpus windows have another end).
    With a fixed prefix or suffix, @mean, @I and attention targets read positions whose
    context is the fixed text, which no corpus window shares: no figure.
    """
    none = lambda why: CorpusReference(None, why)  # noqa: E731
    if not isinstance(target, Atom):
        return none("a sum of targets has no single corpus figure")
    if not math.isfinite(ex.max):
        return none("no finite corpus value")
    red, T = target.reduction, 1 + prefix + length + suffix
    fixed = prefix or suffix
    if target.kind != "attn" and red in ("last", "max"):
        return CorpusReference(ex.max, "max over corpus tokens, each with its window's "
                                       "preceding context")
    if fixed:
        return none(f"@{red} {'attention ' if target.kind in KEY_KINDS else ''}values read "
                    "positions whose context is the fixed prefix or suffix, which no corpus "
                    "text shares")
    if target.kind in KEY_KINDS and target.key < 0:
        return none(f"key {target.key} counts from the end of the sequence: in a "
                    f"{len(ex.position_max) - 1 or '?'}-token corpus window that is another "
                    f"token than in the dream's {length}")
    return _shaped(ex, red, length, T)


def _shaped(ex: "TargetExemplars", red: str, length: int, T: int) -> CorpusReference:
    """The figure read on corpus windows cut to the dream's shape (BOS + ``length``
    tokens; ``T`` tokens in all): by position, or the mean over the first tokens."""
    none = lambda why: CorpusReference(None, why)  # noqa: E731
    pos, pmean = ex.position_max, ex.prefix_mean_max
    W = len(pos) - 1
    if W < 1:
        return none("the mining record predates like-for-like figures; mine again")
    if length > W:
        return none(f"the dream's {length} tokens are longer than the corpus windows ({W})")

    def val(v, what):
        return CorpusReference(v, what) if v is not None and math.isfinite(v) else \
            none(f"no finite corpus value {what}")
    if red == "mean":
        return val(pmean[length], f"max over corpus windows of the mean over their first "
                                  f"{length} tokens (BOS + {length} tokens, the dream's shape)")
    if red == "last":
        return val(pos[length], f"max over corpus windows of the value at position {length} "
                                f"(BOS + {length} tokens, the dream's shape)")
    if red == "max":
        body = [v for v in pos[1:length + 1] if v is not None and math.isfinite(v)]
        return val(max(body) if body else None, f"max over corpus windows of the max over "
                                                f"positions 1-{length} (the dream's shape)")
    i = int(red) % T
    if i > W:
        return none(f"position {i} lies beyond the corpus windows ({W} tokens)")
    return val(pos[i], f"max over corpus windows of the value at position {i} (BOS + {i} "
                       "tokens of real text)")

"""Target specs: what to read from the model, where, and how positions are reduced.

Grammar (DESIGN.md):  ``mlp:L:N``, ``head:L:H``, ``attn:L:H:K``, ``resid:L:N``,
``resid:L:FILE``, each with an optional ``@last`` (default), ``@max``, ``@mean`` or
``@I`` suffix.  TransformerLens hook names are accepted as aliases.  Targets
compose like Lucid objectives: ``a + 0.5 * b``, ``a - b``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from .errors import FeatvizError

# Hook sites, named as TransformerLens names them.
MLP_POST, Z, PATTERN, RESID_POST = "mlp.hook_post", "attn.hook_z", "attn.hook_pattern", "hook_resid_post"

_REDUCTIONS = ("last", "max", "mean")
_TL_ALIASES = [  # (regex on the part before the reduction, kind)
    (re.compile(r"^blocks\.(-?\d+)\.mlp\.hook_post:(.+)$"), "mlp"),
    (re.compile(r"^blocks\.(-?\d+)\.attn\.hook_z:(.+)$"), "head"),
    (re.compile(r"^blocks\.(-?\d+)\.attn\.hook_pattern:(.+)$"), "attn"),
    (re.compile(r"^blocks\.(-?\d+)\.hook_resid_post:(.+)$"), "resid"),
]
_SYNTAX = ("expected mlp:L:N, head:L:H, attn:L:H:K, resid:L:N or resid:L:FILE, "
           "optionally followed by @last, @max, @mean or @I")


class Target:
    """Base of the target algebra: anything with weighted atoms."""

    def terms(self) -> list[tuple[float, "Atom"]]:
        raise NotImplementedError

    # -- algebra (Lucid-style objective composition) --
    def __add__(self, other):
        if isinstance(other, (int, float)) and other == 0:
            return self
        if not isinstance(other, Target):
            return NotImplemented
        return Sum(tuple(self.terms()) + tuple(other.terms()))

    __radd__ = __add__

    def __mul__(self, k):
        if not isinstance(k, (int, float)):
            return NotImplemented
        return Sum(tuple((w * float(k), a) for w, a in self.terms()))

    __rmul__ = __mul__

    def __neg__(self):
        return self * -1.0

    def __sub__(self, other):
        if not isinstance(other, Target):
            return NotImplemented
        return self + (-other)

    # -- shared behaviour --
    @property
    def layers(self) -> list[int]:
        return sorted({a.layer for _, a in self.terms()})

    @property
    def max_layer(self) -> int:
        return max(a.layer for _, a in self.terms())

    def sites(self) -> set[tuple[str, int]]:
        return {a.site for _, a in self.terms()}

    def validate(self, handle) -> "Target":
        for _, a in self.terms():
            a.validate(handle)
        return self

    def per_position(self, captures: dict, handle, length: int | None = None) -> torch.Tensor:
        """Weighted per-position values, shape (batch, seq); ``length``: see Atom."""
        return sum(w * a.per_position(captures, handle, length) for w, a in self.terms())

    def evaluate(self, captures: dict, handle, span: tuple | None = None) -> torch.Tensor:
        """Reduced value per sequence, shape (batch,).  ``span`` (lo, hi): the positions
        @max and @mean range over (default: all but BOS); a dream passes its optimised
        positions, so a fixed prefix or suffix never counts."""
        return sum(w * a.reduce(a.per_position(captures, handle), span) for w, a in self.terms())

    def evaluate_prefix(self, history: dict, length: int, span: tuple | None = None):
        """The value the beam ranks a partial sequence by: ``history`` maps each atom to
        its (batch, p) values at the first p positions of a sequence that will have
        ``length`` tokens (see ``Atom.reduce_prefix``)."""
        return sum(w * a.reduce_prefix(history[a], length, span) for w, a in self.terms())

    def check_length(self, length: int, span: tuple | None = None) -> None:
        """A one-line error, before any search, when a position or key this target reads
        does not exist in a sequence of ``length`` tokens."""
        for _, a in self.terms():
            a.reduce_plan(length, span)
            if a.kind == "attn":
                a.key_index(length)

    def describe(self, handle=None) -> str:
        return " + ".join(f"{w:g}*({a.describe(handle)})" for w, a in self.terms())


@dataclass(frozen=True)
class Atom(Target):
    """One readout: a neuron, head norm, attention probability or residual direction."""

    kind: str                 # "mlp" | "head" | "attn" | "resid"
    layer: int
    index: int | None = None  # neuron, head, or basis dimension
    key: int | None = None    # attn key position
    file: str | None = None   # resid direction file
    reduction: str = "last"   # "last" | "max" | "mean" | "<int>"

    def terms(self):
        return [(1.0, self)]

    @property
    def name(self) -> str:
        body = {"mlp": f"mlp:{self.layer}:{self.index}",
                "head": f"head:{self.layer}:{self.index}",
                "attn": f"attn:{self.layer}:{self.index}:{self.key}",
                "resid": f"resid:{self.layer}:{self.file if self.file else self.index}"}[self.kind]
        return body + ("" if self.reduction == "last" else f"@{self.reduction}")

    def __str__(self):
        return self.name

    @property
    def site(self) -> tuple[str, int]:
        return ({"mlp": MLP_POST, "head": Z, "attn": PATTERN, "resid": RESID_POST}[self.kind],
                self.layer)

    def describe(self, handle=None) -> str:
        red = {"last": "at the last position", "max": "max over positions (BOS excluded)",
               "mean": "mean over positions (BOS excluded)"}.get(
            self.reduction, f"at position {self.reduction}")
        if self.kind == "mlp":
            act = f" [{handle.mlp_activation}]" if handle is not None else ""
            what = f"MLP neuron {self.index} of layer {self.layer}{act}"
        elif self.kind == "head":
            what = f"L2 norm of head {self.index}'s output z at layer {self.layer} (hook_z)"
        elif self.kind == "attn":
            what = (f"attention probability of head {self.index}, layer {self.layer}, "
                    f"to key position {self.key}")
        else:
            if self.file:
                norm = f", norm {self.direction_norm(handle):.6g}" if handle is not None else ""
                d = (f"the unit direction in {self.file} (the file's vector divided by its "
                     f"norm{norm})")
            else:
                d = f"basis dimension {self.index}"
            what = f"residual stream after block {self.layer} projected on {d}"
        return f"{what}, {red}"

    # -- validation against a model --
    def validate(self, handle) -> "Atom":
        def bad(msg):
            raise FeatvizError(f"target '{self.name}': {msg}")
        if not 0 <= self.layer < handle.n_layers:
            bad(f"layer {self.layer} is out of range; this model has layers 0-{handle.n_layers - 1}")
        if self.kind == "mlp" and not 0 <= self.index < handle.d_mlp:
            bad(f"neuron {self.index} is out of range; layer {self.layer} has neurons "
                f"0-{handle.d_mlp - 1}")
        if self.kind in ("head", "attn") and not 0 <= self.index < handle.n_heads:
            bad(f"head {self.index} is out of range; this model has heads 0-{handle.n_heads - 1}")
        if self.kind == "resid" and self.file is None and not 0 <= self.index < handle.d_model:
            bad(f"dimension {self.index} is out of range; the residual stream has dimensions "
                f"0-{handle.d_model - 1}")
        if self.kind == "resid" and self.file is not None:
            self.direction(handle)
        return self

    def direction(self, handle) -> torch.Tensor:
        """The unit direction in ``file`` (the file's vector divided by its norm)."""
        return self._direction(handle)[0]

    def direction_norm(self, handle) -> float:
        """The norm of the vector stored in ``file`` (recorded in every output)."""
        return self._direction(handle)[1]

    def _direction(self, handle):
        key = ("direction", os.path.abspath(self.file))
        if key not in handle.cache:
            vec = load_direction(self.file, handle.d_model)
            norm = float(vec.double().norm())
            handle.cache[key] = ((vec.double() / norm).float(), norm)
        return handle.cache[key]

    # -- reading --
    def per_position(self, captures: dict, handle, length: int | None = None) -> torch.Tensor:
        """(batch, q) values at the query positions in ``captures``.  ``length``: the
        sequence's full length when the captures hold only its first positions (a KV-cache
        step): an attention key is then resolved against ``length``, and a key that lies
        after the positions present reads 0, as the causal mask makes it in the full pass."""
        x = captures[self.site]
        if self.kind == "mlp":
            return x[..., self.index]
        if self.kind == "head":
            b, t, _ = x.shape
            return x.reshape(b, t, handle.n_heads, handle.head_dim)[:, :, self.index].norm(dim=-1)
        if self.kind == "attn":
            k = self.key_index(length if length is not None else x.shape[-1])
            if k >= x.shape[-1]:
                return x.new_zeros(x.shape[0], x.shape[2])
            return x[:, self.index, :, k]
        if self.file is not None:
            return x @ self.direction(handle).to(x.device, x.dtype)
        return x[..., self.index]

    # index arithmetic shared by both backends (featviz.jaxfwd reads through these too)
    def key_index(self, t: int) -> int:
        """The attention key position this target reads in a sequence of t tokens."""
        k = self.key if self.key >= 0 else t + self.key
        if not 0 <= k < t:
            raise FeatvizError(f"target '{self.name}': key position {self.key} is outside "
                               f"a sequence of {t} tokens")
        return k

    def reduce_plan(self, t: int, span: tuple | None = None):
        """How a (batch, t) reading is reduced: ("at", i) reads position i (0 <= i < t);
        ("max" | "mean", (lo, hi)) reduces positions lo..hi-1, by default every position
        but BOS (1..t-1; BOS alone when t is 1)."""
        if self.reduction == "last":
            return "at", t - 1
        if self.reduction in ("max", "mean"):
            lo, hi = span if span is not None else (1, t)
            lo, hi = max(0, min(lo, t - 1)), min(hi, t)
            return self.reduction, (lo, max(hi, lo + 1))
        i = int(self.reduction)
        if not -t <= i < t:
            raise FeatvizError(f"target '{self.name}': position {i} is outside a sequence of "
                               f"{t} tokens (BOS is position 0)")
        return "at", i % t

    def reduce(self, values: torch.Tensor, span: tuple | None = None) -> torch.Tensor:
        """Reduce (batch, seq) values to (batch,); see ``reduce_plan``."""
        how, i = self.reduce_plan(values.shape[-1], span)
        if how == "at":
            return values[:, i]
        body = values[:, i[0]:i[1]]
        return body.max(dim=-1).values if how == "max" else body.mean(dim=-1)

    def reduce_prefix(self, values: torch.Tensor, length: int, span: tuple | None = None):
        """Reduce the (batch, p) values of the first p positions of a sequence that will
        have ``length`` tokens.  Exact once p == length; before that, what a left-to-right
        search can rank by: the newest position for @last, the span so far for @max and
        @mean, the value at I once position I exists (0 before)."""
        p = values.shape[-1]
        how, i = self.reduce_plan(length, span)
        if self.reduction == "last":
            return values[:, -1]
        if how == "at":
            return values[:, i] if i < p else values.new_zeros(values.shape[0])
        lo, hi = i[0], min(i[1], p)
        if hi <= lo:
            return values.new_zeros(values.shape[0])
        body = values[:, lo:hi]
        return body.max(dim=-1).values if how == "max" else body.mean(dim=-1)


@dataclass(frozen=True)
class Sum(Target):
    """A weighted sum of atoms, built by the target algebra."""

    items: tuple

    def terms(self):
        return list(self.items)

    @property
    def name(self) -> str:
        return " + ".join(f"{w:g}*{a.name}" for w, a in self.items)

    def __str__(self):
        return self.name


@dataclass(frozen=True)
class PerRow(Target):
    """Several targets in one batch: batch row r reads ``targets[rows[r]]``.  This is how
    one relaxation optimises many targets at once (each row its own target); every
    sub-target is read on every row (a column read each), then each row keeps its own."""

    targets: tuple
    rows: tuple

    def terms(self):
        return [ta for t in self.targets for ta in t.terms()]

    def _pick(self, vals: torch.Tensor) -> torch.Tensor:
        r = torch.as_tensor(self.rows, device=vals.device)
        return vals[r, torch.arange(len(r), device=vals.device)]

    def per_position(self, captures: dict, handle, length: int | None = None) -> torch.Tensor:
        return self._pick(torch.stack([t.per_position(captures, handle, length)
                                       for t in self.targets]))

    def evaluate(self, captures: dict, handle, span: tuple | None = None) -> torch.Tensor:
        return self._pick(torch.stack([t.evaluate(captures, handle, span) for t in self.targets]))

    @property
    def name(self) -> str:
        return "per-row(" + ", ".join(str(t) for t in self.targets) + ")"

    def __str__(self):
        return self.name


def load_direction(path: str, d_model: int) -> torch.Tensor:
    """Read a direction vector of length d_model from a .npy or .safetensors file."""
    if not os.path.isfile(path):
        raise FeatvizError(f"direction file '{path}' does not exist; pass a .npy or "
                           ".safetensors file holding one vector")
    try:
        if path.endswith(".npy"):
            vec = np.load(path, allow_pickle=False)
        elif path.endswith(".safetensors"):
            from safetensors.numpy import load_file
            tensors = load_file(path)
            if len(tensors) != 1:
                raise FeatvizError(f"direction file '{path}' holds {len(tensors)} tensors; "
                                   "save exactly one")
            vec = next(iter(tensors.values()))
        else:
            raise FeatvizError(f"direction file '{path}' must end in .npy or .safetensors")
    except FeatvizError:
        raise
    except Exception as e:  # noqa: BLE001
        raise FeatvizError(f"cannot read direction file '{path}': {e}") from None
    vec = np.asarray(vec, dtype=np.float32).reshape(-1)
    if vec.shape[0] != d_model:
        raise FeatvizError(f"direction file '{path}' has {vec.shape[0]} values; the residual "
                           f"stream has {d_model}")
    if not np.all(np.isfinite(vec)):
        raise FeatvizError(f"direction file '{path}' contains NaN or Inf")
    if not np.any(vec):
        raise FeatvizError(f"direction file '{path}' holds the zero vector; a direction needs "
                           "a nonzero norm")
    return torch.from_numpy(vec)


def _int(text: str, what: str, spec: str) -> int:
    if not re.fullmatch(r"-?\d+", text or ""):
        raise FeatvizError(f"bad target '{spec}': {what} '{text}' is not an integer; {_SYNTAX}")
    return int(text)


def _split_reduction(spec: str) -> tuple[str, str]:
    if "@" not in spec:
        return spec, "last"
    body, red = spec.rsplit("@", 1)
    red = red.strip()
    if red in _REDUCTIONS:
        return body, red
    if re.fullmatch(r"-?\d+", red):
        return body, str(int(red))
    raise FeatvizError(f"bad target '{spec}': unknown reduction '@{red}'; use @last, @max, "
                       "@mean or @I (an integer position)")


def _expand(text: str, what: str, spec: str) -> list[int]:
    """An integer or an inclusive range A-B (for galleries)."""
    m = re.fullmatch(r"(\d+)-(\d+)", text)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        if b < a:
            raise FeatvizError(f"bad target '{spec}': empty range {text}")
        return list(range(a, b + 1))
    return [_int(text, what, spec)]


def parse_targets(spec: str, handle=None) -> list[Atom]:
    """Parse one spec into atoms; ``mlp:6:0-63`` expands to 64 atoms."""
    if not isinstance(spec, str) or not spec.strip():
        raise FeatvizError(f"empty target; {_SYNTAX}")
    spec = spec.strip()
    body, red = _split_reduction(spec)
    for rx, kind in _TL_ALIASES:
        m = rx.match(body)
        if m:
            body = f"{kind}:{m.group(1)}:{m.group(2)}"
            break
    parts = body.split(":")
    kind = parts[0]
    arity = {"mlp": 3, "head": 3, "attn": 4, "resid": 3}
    if kind not in arity:
        raise FeatvizError(f"bad target '{spec}': unknown kind '{kind}'; {_SYNTAX}")
    if kind == "resid" and len(parts) > 3:      # a file path may itself contain ':'
        parts = parts[:2] + [":".join(parts[2:])]
    if len(parts) != arity[kind]:
        raise FeatvizError(f"bad target '{spec}': {kind} takes {arity[kind] - 1} numbers; {_SYNTAX}")
    layer = _int(parts[1], "layer", spec)
    if kind == "resid" and not re.fullmatch(r"-?\d+|\d+-\d+", parts[2]):
        atoms = [Atom("resid", layer, file=parts[2], reduction=red)]
    elif kind == "attn":
        atoms = [Atom("attn", layer, h, _int(parts[3], "key position", spec), reduction=red)
                 for h in _expand(parts[2], "head", spec)]
    else:
        what = {"mlp": "neuron", "head": "head", "resid": "dimension"}[kind]
        atoms = [Atom(kind, layer, i, reduction=red) for i in _expand(parts[2], what, spec)]
    if handle is not None:
        for a in atoms:
            a.validate(handle)
    return atoms


def parse_target(spec: str, handle=None) -> Atom:
    """Parse exactly one target (no ranges); validate it when a model handle is given."""
    atoms = parse_targets(spec, handle)
    if len(atoms) != 1:
        raise FeatvizError(f"target '{spec}' names {len(atoms)} targets; give a single one here")
    return atoms[0]


def as_target(t, handle=None) -> Target:
    """Accept a Target or a spec string."""
    if isinstance(t, Target):
        return t.validate(handle) if handle is not None else t
    return parse_target(t, handle)


def all_sites(targets: Iterable[Target]) -> set[tuple[str, int]]:
    out: set = set()
    for t in targets:
        out |= t.sites()
    return out

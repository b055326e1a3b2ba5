"""Target specs: what to read from the model, where, and how positions are reduced.

Grammar (targets.spec; docs/design.md):  ``mlp:L:N``, ``head:L:H``, ``attn:L:H:K``, ``resid:L:N``,
``resid:L:FILE``, each with an optional ``@last`` (default), ``@max``, ``@mean`` or
``@I`` suffix.  TransformerLens hook names are accepted as aliases.  Targets
compose like Lucid objectives: ``a + 0.5 * b``, ``a - b``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch

from featviz.errors import FeatvizError
from featviz.targets.directions import load_direction
from featviz.targets.kinds import (
    HEAD_DIM_KINDS,
    KEY_KINDS,
    KINDS,
    RESIDUAL_KINDS,
    TORCH_OPS,
    UNIT_KINDS,
    Read,
    reduce_with,
)
from featviz.targets.sae import SaeSpec, check_model, load_spec, load_weights


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
        """The deepest layer read (-1: ln_final, after the last block; see ``depth``)."""
        return max(a.layer for _, a in self.terms())

    def depth(self, handle) -> int:
        """The deepest block a reading needs in this model (ln_final: the last)."""
        return max(handle.n_layers - 1 if a.layer < 0 else a.layer for _, a in self.terms())

    def sites(self) -> set[tuple[str, int]]:
        return {a.site for _, a in self.terms()}

    def validate(self, handle) -> "Target":
        for _, a in self.terms():
            a.validate(handle)
        return self

    def saes(self) -> list[dict]:
        """What each distinct SAE this target reads says about itself (path, format,
        architecture, hook, d_in, d_sae ...): for records and pages."""
        seen = {}
        for _, a in self.terms():
            if a.kind == "sae" and a.file not in seen:
                seen[a.file] = a.sae_spec.describe()
        return list(seen.values())

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
            if a.kind in KEY_KINDS:
                a.key_index(length)

    def describe(self, handle=None) -> str:
        return " + ".join(f"{w:g}*({a.describe(handle)})" for w, a in self.terms())


@dataclass(frozen=True)
class Atom(Target):
    """One readout: a neuron, head norm, attention probability, residual direction or SAE
    feature."""

    kind: str                 # a key of targets.kinds.KINDS ("mlp", "head", "attn", "sae", ...)
    layer: int
    index: int | None = None  # neuron, head, basis dimension or SAE feature
    key: int | None = None    # attn key position
    file: str | None = None   # a residual kind's direction file; an SAE's path
    reduction: str = "last"   # "last" | "max" | "mean" | "<int>"
    dim: int | None = None    # the dimension within head ``index`` (q, k, v, z)

    def terms(self):
        return [(1.0, self)]

    @property
    def name(self) -> str:
        if self.kind in KEY_KINDS:
            body = f"{self.kind}:{self.layer}:{self.index}:{self.key}"
        elif self.kind == "ln_final":
            body = f"ln_final:{self.file if self.file else self.index}"
        elif self.kind in HEAD_DIM_KINDS:
            body = f"{self.kind}:{self.layer}:{self.index}:{self.dim}"
        elif self.kind == "sae":
            body = f"sae:{self.file}:{self.index}"
        elif self.kind in RESIDUAL_KINDS:
            body = f"{self.kind}:{self.layer}:{self.file if self.file else self.index}"
        else:
            body = f"{self.kind}:{self.layer}:{self.index}"
        return body + ("" if self.reduction == "last" else f"@{self.reduction}")

    def __str__(self):
        return self.name

    @property
    def site(self) -> tuple[str, int]:
        if self.kind == "sae":
            return self.sae_spec.site, self.layer
        return KINDS[self.kind].site, self.layer

    # -- SAE features --
    @property
    def sae_spec(self) -> SaeSpec:
        """The SAE an ``sae`` atom reads (its config; ``targets.sae``)."""
        return load_spec(self.file)

    def sae_weights_np(self) -> dict:
        return load_weights(self.sae_spec)

    def sae_weights(self, handle, like: torch.Tensor) -> dict:
        """The SAE's weights as torch tensors on ``like``'s device and dtype (cached)."""
        key = ("sae", os.path.abspath(self.file), str(like.device), like.dtype)
        source = self.sae_weights_np()                # a new dict when the file changed
        if key not in handle.cache or handle.cache[key][0] is not source:
            handle.cache[key] = (source, {k: torch.from_numpy(v).to(like.device, like.dtype)
                                          for k, v in source.items()})
        return handle.cache[key][1]

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
        elif self.kind == "scores":
            what = (f"attention score (before the softmax; 0 where the causal mask hides the "
                    f"key) of head {self.index}, layer {self.layer}, to key position {self.key}")
        elif self.kind in HEAD_DIM_KINDS:
            part = {"q": "query (before RoPE)", "k": "key (before RoPE)", "v": "value",
                    "z": "output z"}[self.kind]
            what = (f"dimension {self.dim} of head {self.index}'s {part} at layer {self.layer} "
                    f"(attn.hook_{self.kind})")
        elif self.kind == "mlp_pre":
            what = (f"MLP pre-activation {self.index} of layer {self.layer} (mlp.hook_pre: the "
                    "gate of a gated MLP)")
        elif self.kind == "mlp_pre_linear":
            what = (f"the linear branch of MLP neuron {self.index} of layer {self.layer} "
                    "(mlp.hook_pre_linear)")
        elif self.kind == "sae":
            sp = self.sae_spec
            what = (f"feature {self.index} of the {sp.architecture} SAE {self.file} "
                    f"(d_sae {sp.d_sae}, reading {sp.hook}"
                    + (f", head {sp.head}" if sp.head is not None else "")
                    + (f"; {sp.assumed}" if sp.assumed else "") + ")")
        else:
            if self.file:
                norm = f", norm {self.direction_norm(handle):.6g}" if handle is not None else ""
                d = (f"the unit direction in {self.file} (the file's vector divided by its "
                     f"norm{norm})")
            else:
                d = f"basis dimension {self.index}"
            where = {"resid": f"residual stream after block {self.layer}",
                     "resid_pre": f"residual stream before block {self.layer}",
                     "resid_mid": f"residual stream between attention and MLP of block "
                                  f"{self.layer}",
                     "attn_out": f"attention output of block {self.layer}",
                     "mlp_out": f"MLP output of block {self.layer}",
                     "ln_final": "final norm's normalized stream (before its weight; "
                                 "ln_final.hook_normalized)"}[self.kind]
            what = f"{where} projected on {d}"
        return f"{what}, {red}"

    # -- validation against a model --
    def validate(self, handle) -> "Atom":
        def bad(msg):
            raise FeatvizError(f"target '{self.name}': {msg}")
        if self.kind == "sae":
            check_model(self.sae_spec, handle)
        if not 0 <= self.layer < handle.n_layers and not (self.kind == "ln_final" and self.layer == -1):
            bad(f"layer {self.layer} is out of range; this model has layers 0-{handle.n_layers - 1}")
        if self.kind == "mlp_pre_linear" and handle.arch != "llama":
            bad("mlp.hook_pre_linear exists only in gated MLPs; this model's MLP is not gated "
                "(use mlp_pre or mlp)")
        if self.kind in HEAD_DIM_KINDS:
            heads = handle.n_kv_heads if self.kind in ("k", "v") else handle.n_heads
            if not 0 <= self.index < heads:
                bad(f"head {self.index} is out of range; attn.hook_{self.kind} has heads "
                    f"0-{heads - 1}")
            if not 0 <= self.dim < handle.head_dim:
                bad(f"dimension {self.dim} is out of range; a head has dimensions "
                    f"0-{handle.head_dim - 1}")
        if self.kind in UNIT_KINDS and not 0 <= self.index < handle.d_mlp:
            bad(f"neuron {self.index} is out of range; layer {self.layer} has neurons "
                f"0-{handle.d_mlp - 1}")
        if self.kind in ("head",) + KEY_KINDS and not 0 <= self.index < handle.n_heads:
            bad(f"head {self.index} is out of range; this model has heads 0-{handle.n_heads - 1}")
        resid = self.kind in RESIDUAL_KINDS
        if resid and self.file is None and not 0 <= self.index < handle.d_model:
            bad(f"dimension {self.index} is out of range; the residual stream has dimensions "
                f"0-{handle.d_model - 1}")
        if resid and self.file is not None:
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
        key = self.key_index(length if length is not None else x.shape[-1]) \
            if self.kind in KEY_KINDS else None
        sae = (self.sae_spec, self.sae_weights(handle, x)) if self.kind == "sae" else None
        d = self.direction(handle).to(x.device, x.dtype) \
            if self.file is not None and sae is None else None
        return KINDS[self.kind].read(
            x, Read(self.index, key, d, handle.n_heads, handle.head_dim, sae, self.dim), TORCH_OPS)

    def column(self, handle) -> int | None:
        """The one column of its hook this atom reads (neurons, basis dimensions, a head's
        dimension), or None when it reads otherwise: the miner gathers columns of a hook
        with one index."""
        if self.kind in UNIT_KINDS or (self.kind in RESIDUAL_KINDS and self.file is None):
            return self.index
        if self.kind in HEAD_DIM_KINDS:
            return self.index * handle.head_dim + self.dim
        return None

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
        return reduce_with(how, i, values)

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
        return reduce_with(how, (lo, hi), values)


@dataclass(frozen=True)
class Sum(Target):
    """A weighted sum of atoms, built by the target algebra."""

    items: tuple

    def terms(self):
        return list(self.items)

    @property
    def name(self) -> str:
        return " + ".join(f"{w:g}*{a.name}" for w, a in self.items)

    def describe(self, handle=None) -> str:
        if len(self.items) == 1 and self.items[0][0] < 0:      # "-mlp:3:5": minimised
            w, a = self.items[0]
            return (f"minimised: {w:g} x ({a.describe(handle)}); its top corpus windows are "
                    f"where {a.name} is most negative, and the synthetic text drives {a.name} "
                    "down")
        return super().describe(handle)

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


def input_files(targets: Iterable[Target]) -> list:
    """[path, size, mtime] of every file the targets read (direction files, SAE folders'
    files), sorted: caches and gallery settings keys include it, so a retrained SAE or an
    edited direction saved under the same path is never served stale results."""
    paths = set()
    for t in targets:
        for _, a in t.terms():
            if a.file is None:
                continue
            f = os.path.abspath(a.file)
            paths |= {os.path.join(f, n) for n in os.listdir(f)} if os.path.isdir(f) else {f}
    out = []
    for p in sorted(paths):
        if os.path.isfile(p):
            st = os.stat(p)
            out.append([p, st.st_size, st.st_mtime_ns])
    return out


def all_sites(targets: Iterable[Target]) -> set[tuple[str, int]]:
    out: set = set()
    for t in targets:
        out |= t.sites()
    return out

"""The target spec grammar: ``mlp:L:N``, ``head:L:H``, ``attn:L:H:K``, ``resid:L:N``,
``resid:L:FILE`` (and ``resid_pre``, ``resid_mid``, ``attn_out``, ``mlp_out`` likewise),
``sae:PATH:N`` (feature N of the SAE at PATH; ``sae:PATH:all`` for all of them), each with
an optional ``@last`` (default), ``@max``, ``@mean`` or ``@I`` suffix; TransformerLens hook
names (``blocks.6.hook_resid_pre:10``) and ``get_act_name`` shorthands (``resid_pre6:10``,
``post6:5``, ``z7:3``) as aliases; ranges (``mlp:6:0-63``) for galleries; and
the target algebra: ``"mlp:3:5 - 0.5*mlp:3:6"`` (binary + and - with spaces around them,
an optional ``W*`` weight per term) and ``"-mlp:3:5"`` (minimise).  A sum's name
(``1*mlp:3:5 + -0.5*mlp:3:6``) parses back to the same sum."""
from __future__ import annotations

import re

from featviz.errors import FeatvizError
from featviz.targets.core import Atom, Sum, Target
from featviz.targets.kinds import HEAD_DIM_KINDS, KEY_KINDS, RESIDUAL_KINDS
from featviz.targets.sae import load_spec

_REDUCTIONS = ("last", "max", "mean")
# TransformerLens hook -> kind: the full name (blocks.L.<hook>) and get_act_name's shorthand
_HOOK_KINDS = {"mlp.hook_post": ("mlp", "post"), "attn.hook_z": ("head", "z"),
               "attn.hook_pattern": ("attn", "pattern"), "hook_resid_post": ("resid", "resid_post"),
               "hook_resid_pre": ("resid_pre", "resid_pre"),
               "hook_resid_mid": ("resid_mid", "resid_mid"),
               "hook_attn_out": ("attn_out", "attn_out"), "hook_mlp_out": ("mlp_out", "mlp_out"),
               "mlp.hook_pre_linear": ("mlp_pre_linear", "pre_linear"),
               "mlp.hook_pre": ("mlp_pre", "pre"), "attn.hook_q": ("q", "q"),
               "attn.hook_k": ("k", "k"), "attn.hook_v": ("v", "v"),
               "attn.hook_attn_scores": ("scores", "attn_scores")}
_TL_ALIASES = [(re.compile(r"^blocks\.(-?\d+)\." + re.escape(hook) + r":(.+)$"), kind)
               for hook, (kind, _) in _HOOK_KINDS.items()]
_TL_ALIASES += [(re.compile(r"^" + short + r"(\d+):(.+)$"), kind)
                for kind, short in _HOOK_KINDS.values()]
_ARITY = {"mlp": 3, "head": 3, "attn": 4, "scores": 4, "mlp_pre": 3, "mlp_pre_linear": 3,
          **{k: 3 for k in RESIDUAL_KINDS}, **{k: 4 for k in HEAD_DIM_KINDS}}
_SYNTAX = ("expected mlp:L:N, head:L:H, attn:L:H:K, resid:L:N or resid:L:FILE (also "
           "resid_pre, resid_mid, attn_out, mlp_out), mlp_pre:L:N, mlp_pre_linear:L:N, "
           "q/k/v/z:L:H:D, scores:L:H:K, ln_final:N, sae:PATH:N, or a TransformerLens hook "
           "name such as "
           "blocks.L.hook_resid_pre:N, optionally followed by @last, @max, @mean or @I")


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


_BINARY = re.compile(r"\s+([+-])\s+")
_TERM = re.compile(r"(?P<neg>-)?(?:(?P<w>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*\*\s*)?"
                   r"(?P<spec>.*)")


def _is_expression(spec: str) -> bool:
    return bool(_BINARY.search(spec) or spec.startswith(("-", "+")) or _TERM.fullmatch(spec)["w"])


def parse_expression(spec: str, handle=None) -> Sum:
    """``"mlp:3:5 - 0.5*mlp:3:6"``, ``"-mlp:3:5"``: a weighted sum of single targets."""
    parts = _BINARY.split(spec.strip())
    terms, sign = [], 1.0
    for i, part in enumerate(parts):
        if i % 2:
            sign = -1.0 if part == "-" else 1.0
            continue
        m = _TERM.fullmatch(part.strip())
        body = m["spec"].strip()
        if not body or body.startswith(("-", "+", "*")):
            raise FeatvizError(f"bad target '{spec}': term '{part}' is not [-][W*]TARGET; write "
                               "e.g. \"mlp:3:5 - 0.5*mlp:3:6\" (spaces around + and -)")
        atoms = parse_targets(body, handle)
        if len(atoms) != 1:
            raise FeatvizError(f"bad target '{spec}': the range '{body}' cannot be a term of a "
                               "sum; write its targets one by one")
        w = sign * (-1.0 if m["neg"] else 1.0) * (float(m["w"]) if m["w"] else 1.0)
        terms.append((w, atoms[0]))
    return Sum(tuple(terms))


def parse_targets(spec: str, handle=None) -> list[Target]:
    """Parse one spec into targets; ``mlp:6:0-63`` expands to 64 atoms, an expression
    (``"mlp:3:5 - 0.5*mlp:3:6"``) is one sum."""
    if not isinstance(spec, str) or not spec.strip():
        raise FeatvizError(f"empty target; {_SYNTAX}")
    spec = spec.strip()
    if _is_expression(spec):
        return [parse_expression(spec, handle)]
    body, red = _split_reduction(spec)
    for rx, kind in _TL_ALIASES:
        m = rx.match(body)
        if m:
            body = f"{kind}:{m.group(1)}:{m.group(2)}"
            break
    if body.startswith("ln_final.hook_normalized:"):
        body = "ln_final:" + body.split(":", 1)[1]
    if body.startswith("ln_final:"):           # no layer: after the last block (-1)
        body = "ln_final:-1:" + body.split(":", 1)[1]
    parts = body.split(":")
    kind = parts[0]
    if kind == "head" and len(parts) == 4:     # hook_z:H:D is a dimension, hook_z:H the norm
        kind = parts[0] = "z"
    if kind == "sae":
        atoms = _sae_atoms(parts, red, spec)
    elif kind not in _ARITY:
        raise FeatvizError(f"bad target '{spec}': unknown kind '{kind}'; {_SYNTAX}")
    else:
        atoms = _atoms(kind, parts, red, spec)
    if handle is not None:
        for a in atoms:
            a.validate(handle)
    return atoms


def _sae_atoms(parts: list, red: str, spec: str) -> list[Atom]:
    """``sae:PATH:N`` (PATH may contain ':'), ``sae:PATH:A-B`` or ``sae:PATH:all``."""
    if len(parts) < 3 or not parts[-1]:
        raise FeatvizError(f"bad target '{spec}': write sae:PATH:N (feature N of the SAE at "
                           "PATH), sae:PATH:A-B or sae:PATH:all")
    path, which = ":".join(parts[1:-1]), parts[-1]
    sae = load_spec(path)
    feats = list(range(sae.d_sae)) if which == "all" else _expand(which, "feature", spec)
    for f in (feats[0], feats[-1]):
        if not 0 <= f < sae.d_sae:
            raise FeatvizError(f"bad target '{spec}': feature {f} is out of range; the SAE "
                               f"has features 0-{sae.d_sae - 1}")
    return [Atom("sae", sae.layer, f, file=path, reduction=red) for f in feats]


def _atoms(kind: str, parts: list, red: str, spec: str) -> list[Atom]:
    resid = kind in RESIDUAL_KINDS
    if resid and len(parts) > 3:                # a file path may itself contain ':'
        parts = parts[:2] + [":".join(parts[2:])]
    if len(parts) != _ARITY[kind]:
        raise FeatvizError(f"bad target '{spec}': {kind} takes {_ARITY[kind] - 1} numbers; "
                           f"{_SYNTAX}")
    layer = _int(parts[1], "layer", spec)
    if resid and not re.fullmatch(r"-?\d+|\d+-\d+", parts[2]):
        atoms = [Atom(kind, layer, file=parts[2], reduction=red)]
    elif kind in KEY_KINDS:
        atoms = [Atom(kind, layer, h, _int(parts[3], "key position", spec), reduction=red)
                 for h in _expand(parts[2], "head", spec)]
    elif kind in HEAD_DIM_KINDS:
        atoms = [Atom(kind, layer, h, reduction=red, dim=d)
                 for h in _expand(parts[2], "head", spec)
                 for d in _expand(parts[3], "dimension", spec)]
    else:
        what = {"mlp": "neuron", "mlp_pre": "neuron", "mlp_pre_linear": "neuron",
                "head": "head"}.get(kind, "dimension")
        atoms = [Atom(kind, layer, i, reduction=red) for i in _expand(parts[2], what, spec)]
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

"""Sparse-autoencoder features as targets: the SAE files the field uses, and the encoder
each architecture's reference computes.

Formats (``load_spec``):
  * SAELens folders: ``cfg.json`` + ``sae_weights.safetensors``, the v6 nested config
    (``architecture``, ``metadata.hook_name``, ``k``, ...) and the flat pre-6.0 one
    (``hook_point``, ``activation_fn_str``, ``activation_fn_kwargs.k``);
  * sparsify folders: ``cfg.json`` + ``sae.safetensors`` (TopK); the hook comes from the
    folder's name (``layers.6`` -> ``blocks.6.hook_resid_post``), and the spec says so;
  * Gemma Scope ``params.npz`` (JumpReLU); the hook comes from the path
    (``gemma-scope-2b-pt-res/layer_12/...`` -> ``blocks.12.hook_resid_post``).

Architectures (``encode``), as SAELens 6 computes them, x being the hooked activation
after the input normalisation and, where ``apply_b_dec_to_input``, minus ``b_dec``:
  * standard: ReLU(x W_enc + b_enc);
  * topk: the k largest of h = x W_enc + b_enc (times the decoder norms when
    ``rescale_acts_by_decoder_norm``) through a ReLU, the others 0;
  * jumprelu: ReLU(h) where h > threshold, else 0;
  * gated: [x W_enc + b_gate > 0] * ReLU(x (W_enc * exp(r_mag)) + b_mag).
Input normalisation: ``constant_norm_rescale`` (x * sqrt(d_in) / |x|), ``layer_norm``,
and ``expected_average_only_in`` with a ``norm_scaling_factor`` folded into the weights
(without one it is the identity, as SAELens runs such a folder).
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass

import numpy as np

from featviz.errors import FeatvizError
from featviz.model.forward import MLP_POST, RESIDUAL_SITES, Z

ARCHITECTURES = ("standard", "topk", "jumprelu", "gated")
# the hooks an SAE may read: blocks.L.<site>
SAE_SITES = RESIDUAL_SITES + (Z, MLP_POST)
_HOOK = re.compile(r"^blocks\.(\d+)\.(" + "|".join(re.escape(s) for s in SAE_SITES) + r")$")
_NORMS = ("none", "constant_norm_rescale", "layer_norm", "expected_average_only_in")


@dataclass(frozen=True)
class SaeSpec:
    """What an SAE file says (no weights): where it reads and how it encodes."""

    path: str
    format: str                 # "saelens" | "sparsify" | "gemma-scope"
    architecture: str           # one of ARCHITECTURES
    d_in: int
    d_sae: int
    hook: str                   # the TransformerLens hook name
    site: str                   # featviz's site (model.forward)
    layer: int
    head: int | None = None     # hook_head_index: one head of hook_z
    k: int | None = None        # topk
    apply_b_dec_to_input: bool = True
    normalize: str = "none"
    norm_scaling_factor: float | None = None
    rescale_acts_by_decoder_norm: bool = False
    subtract_b_dec: bool = True  # sparsify: False for a transcoder
    assumed: str | None = None  # what featviz inferred because the file does not say it

    def describe(self) -> dict:
        """What a gallery record and page show about the SAE."""
        out = {"path": self.path, "format": self.format, "architecture": self.architecture,
               "hook": self.hook, "d_in": self.d_in, "d_sae": self.d_sae}
        if self.head is not None:
            out["head"] = self.head
        if self.k is not None:
            out["k"] = self.k
        if self.normalize != "none":
            out["normalize_activations"] = self.normalize
        if self.assumed:
            out["assumed"] = self.assumed
        return out


def _bad(path: str, msg: str):
    raise FeatvizError(f"SAE '{path}': {msg}")


def _hook(path: str, name) -> tuple[str, int]:
    m = _HOOK.match(str(name or ""))
    if not m:
        _bad(path, f"hook '{name}' is not one featviz reads; SAEs may read blocks.L."
             + ", blocks.L.".join(SAE_SITES))
    return m.group(2), int(m.group(1))


def _files(path: str) -> tuple[str, str]:
    """(format, folder or file) for a path naming an SAE."""
    if not os.path.exists(path):
        _bad(path, "no such file or folder; pass an SAELens or sparsify folder (with "
             "cfg.json) or a Gemma Scope params.npz")
    if os.path.isfile(path):
        if path.endswith(".npz"):
            return "gemma-scope", path
        path = os.path.dirname(path) or "."
    if os.path.isfile(os.path.join(path, "params.npz")):
        return "gemma-scope", os.path.join(path, "params.npz")
    if os.path.isfile(os.path.join(path, "sae_weights.safetensors")):
        return "saelens", path
    if os.path.isfile(os.path.join(path, "sae.safetensors")):
        return "sparsify", path
    _bad(path, "no SAE here: expected cfg.json + sae_weights.safetensors (SAELens), "
         "cfg.json + sae.safetensors (sparsify) or params.npz (Gemma Scope)")


def _cfg(path: str, folder: str) -> dict:
    f = os.path.join(folder, "cfg.json")
    if not os.path.isfile(f):
        _bad(path, "cfg.json is missing beside the weights; save the SAE with its config")
    try:
        with open(f) as fh:
            cfg = json.load(fh)
    except (OSError, ValueError) as e:
        _bad(path, f"cannot read cfg.json: {e}")
    if not isinstance(cfg, dict):
        _bad(path, "cfg.json does not hold a JSON object")
    return cfg


def _need(path: str, cfg: dict, key: str, kind=int):
    if key not in cfg or cfg[key] is None:
        _bad(path, f"cfg.json lacks '{key}'")
    try:
        return kind(cfg[key])
    except (TypeError, ValueError):
        _bad(path, f"cfg.json's '{key}' is {cfg[key]!r}, not {kind.__name__}")


def _saelens_spec(path: str, folder: str) -> SaeSpec:
    cfg = _cfg(path, folder)
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    if not hook:
        _bad(path, "cfg.json names no hook (metadata.hook_name in SAELens 6, hook_point "
             "before)")
    site, layer = _hook(path, hook)
    head = meta.get("hook_head_index", cfg.get("hook_head_index", cfg.get("hook_point_head_index")))
    act = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu")) or "relu"
    arch = cfg.get("architecture") or "standard"
    k = cfg.get("k")
    if act == "topk" or arch == "topk":                  # pre-6.0: activation_fn_str "topk"
        arch = "topk"
        k = k if k is not None else (cfg.get("activation_fn_kwargs") or {}).get("k")
        if k is None:
            _bad(path, "a TopK SAE's cfg.json lacks 'k' (activation_fn_kwargs.k before 6.0)")
    elif act != "relu":
        _bad(path, f"activation '{act}' is not supported; featviz reads ReLU, TopK, "
             "JumpReLU and gated SAEs")
    if arch not in ARCHITECTURES:
        _bad(path, f"architecture '{arch}' is not supported; featviz reads "
             + ", ".join(ARCHITECTURES))
    norm = cfg.get("normalize_activations") or "none"
    if norm not in _NORMS:
        _bad(path, f"normalize_activations '{norm}' is not supported; featviz reads "
             + ", ".join(_NORMS))
    factor = cfg.get("norm_scaling_factor")
    assumed = None
    if norm == "expected_average_only_in":
        if factor is None:
            assumed = ("normalize_activations expected_average_only_in without a "
                       "norm_scaling_factor: inputs read unscaled, as SAELens runs this folder")
        norm = "none"
    return SaeSpec(path=path, format="saelens", architecture=arch,
                   d_in=_need(path, cfg, "d_in"), d_sae=_need(path, cfg, "d_sae"), hook=hook,
                   site=site, layer=layer, head=None if head is None else int(head),
                   k=None if k is None else int(k),
                   apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
                   normalize=norm, norm_scaling_factor=None if factor is None else float(factor),
                   rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)),
                   assumed=assumed)


def _sparsify_spec(path: str, folder: str) -> SaeSpec:
    cfg = _cfg(path, folder)
    name = os.path.basename(os.path.normpath(folder))
    m = re.fullmatch(r"(?:.*\.)?layers[._](\d+)(?:\.(mlp|self_attn|attn|attention))?", name)
    if not m:
        _bad(path, f"cannot tell the hook from the sparsify folder name '{name}'; name it "
             "after its hookpoint (layers.6, layers.6.mlp or layers.6.self_attn)")
    site = {None: "hook_resid_post", "mlp": "hook_mlp_out"}.get(m.group(2), "hook_attn_out")
    layer = int(m.group(1))
    hook = f"blocks.{layer}.{site}"
    if cfg.get("activation", "topk") != "topk":
        _bad(path, f"sparsify activation '{cfg.get('activation')}' is not supported; "
             "featviz reads TopK sparsify SAEs")
    d_in = _need(path, cfg, "d_in")
    d_sae = cfg.get("num_latents") or d_in * _need(path, cfg, "expansion_factor")
    return SaeSpec(path=path, format="sparsify", architecture="topk", d_in=d_in, d_sae=int(d_sae),
                   hook=hook, site=site, layer=layer, k=_need(path, cfg, "k"),
                   subtract_b_dec=not cfg.get("transcode", False),
                   assumed=f"hook {hook} from the sparsify folder name '{name}'")


def _gemma_spec(path: str, npz: str) -> SaeSpec:
    full = os.path.abspath(npz)
    lm = re.search(r"layer_(\d+)", full)
    km = re.search(r"(?:^|[-_/])(res|resid|mlp|att|attn)(?:[-_/]|$)", full)
    if not lm or not km:
        _bad(path, "cannot tell which hook this Gemma Scope params.npz reads: its path names "
             "no layer_N and res/mlp/att (as in gemma-scope-2b-pt-res/layer_12/width_16k/"
             "average_l0_82/params.npz); keep the release's folder layout")
    layer = int(lm.group(1))
    site = {"res": "hook_resid_post", "resid": "hook_resid_post", "mlp": "hook_mlp_out"}.get(
        km.group(1), Z)
    shapes = _npz_shapes(path, npz)
    if "W_enc" not in shapes:
        _bad(path, "params.npz lacks tensor 'W_enc'")
    d_in, d_sae = shapes["W_enc"]
    hook = f"blocks.{layer}.{site}"
    return SaeSpec(path=path, format="gemma-scope", architecture="jumprelu", d_in=int(d_in),
                   d_sae=int(d_sae), hook=hook, site=site, layer=layer,
                   apply_b_dec_to_input=False, assumed=f"hook {hook} from the path")


def _npz_shapes(path: str, npz: str) -> dict:
    try:
        with np.load(npz) as data:
            return {k: data[k].shape for k in data.files}
    except Exception as e:  # noqa: BLE001
        _bad(path, f"cannot read {os.path.basename(npz)}: {e}")


_SPECS: dict = {}
_WEIGHTS: dict = {}


def _stamp(path: str):
    """What changes when the SAE at ``path`` is rewritten (its files' sizes and times)."""
    try:
        if os.path.isdir(path):
            return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns)
                                for e in os.scandir(path) if e.is_file()))
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return None


def load_spec(path: str) -> SaeSpec:
    """The SAE at ``path`` (a folder, or a file in it, or a params.npz), its config only;
    cached per path until the file changes.  One-line errors for anything malformed."""
    key = (path, _stamp(path))
    if key not in _SPECS:
        fmt, where = _files(path)
        spec = {"saelens": _saelens_spec, "sparsify": _sparsify_spec,
                "gemma-scope": _gemma_spec}[fmt](path, where)
        if spec.d_in <= 0 or spec.d_sae <= 0:
            _bad(path, f"d_in {spec.d_in} and d_sae {spec.d_sae} must be positive")
        if spec.architecture == "topk" and not 0 < (spec.k or 0) <= spec.d_sae:
            _bad(path, f"k = {spec.k} must lie in 1..d_sae ({spec.d_sae})")
        _SPECS[key] = spec
    return _SPECS[key]


def _tensors(spec: SaeSpec) -> dict:
    fmt, where = _files(spec.path)
    try:
        if fmt == "gemma-scope":
            with np.load(where) as data:
                return {k: np.asarray(data[k]) for k in data.files}
        from safetensors.torch import load_file  # reads bf16 too, unlike numpy
        name = "sae_weights.safetensors" if fmt == "saelens" else "sae.safetensors"
        return {k: v.float().numpy() for k, v in load_file(os.path.join(where, name)).items()}
    except Exception as e:  # noqa: BLE001
        _bad(spec.path, f"cannot read its weights: {e}")


def load_weights(spec: SaeSpec) -> dict:
    """The SAE's float32 numpy weights in SAELens' layout: W_enc (d_in, d_sae), b_enc,
    b_dec (d_in,), W_dec (d_sae, d_in), plus threshold (jumprelu), b_gate, W_mag
    (= W_enc * exp(r_mag)), b_mag (gated) and dec_norm (topk with rescaling).  A missing
    tensor or a wrong shape is a one-line error naming it."""
    key = (spec.path, _stamp(spec.path))
    if key in _WEIGHTS:
        return _WEIGHTS[key]
    raw = _tensors(spec)
    if spec.format == "sparsify":                    # nn.Linear layout: encoder.weight (d_sae, d_in)
        rename = {"encoder.weight": "W_enc_t", "encoder.bias": "b_enc"}
        raw = {rename.get(k, k): v for k, v in raw.items()}
        if "W_enc_t" in raw:
            raw["W_enc"] = raw.pop("W_enc_t").T
    if "log_threshold" in raw and "threshold" not in raw:   # older SAELens JumpReLU
        raw["threshold"] = np.exp(raw.pop("log_threshold"))
    need = {"W_enc": (spec.d_in, spec.d_sae), "W_dec": (spec.d_sae, spec.d_in),
            "b_dec": (spec.d_in,)}
    need.update({"standard": {"b_enc": (spec.d_sae,)}, "topk": {"b_enc": (spec.d_sae,)},
                 "jumprelu": {"b_enc": (spec.d_sae,), "threshold": (spec.d_sae,)},
                 "gated": {"b_gate": (spec.d_sae,), "r_mag": (spec.d_sae,),
                           "b_mag": (spec.d_sae,)}}[spec.architecture])
    w = {}
    for name, shape in need.items():
        if name not in raw:
            _bad(spec.path, f"the weights lack tensor '{name}' that a {spec.architecture} SAE "
                 "needs")
        a = np.asarray(raw[name], dtype=np.float32)
        if a.shape != shape:
            _bad(spec.path, f"tensor '{name}' has shape {tuple(a.shape)}; d_in {spec.d_in} and "
                 f"d_sae {spec.d_sae} make it {shape}")
        if not np.all(np.isfinite(a)):
            _bad(spec.path, f"tensor '{name}' contains NaN or Inf")
        w[name] = a
    if spec.norm_scaling_factor is not None:         # fold it, as SAELens does on load
        s = np.float32(spec.norm_scaling_factor)
        w["W_enc"], w["W_dec"], w["b_dec"] = w["W_enc"] * s, w["W_dec"] / s, w["b_dec"] / s
    if spec.architecture == "gated":
        w["W_mag"] = w["W_enc"] * np.exp(w.pop("r_mag"))[None]
    if spec.architecture == "topk" and spec.rescale_acts_by_decoder_norm:
        w["dec_norm"] = np.linalg.norm(w["W_dec"], axis=-1).astype(np.float32)
    for old in [k for k in _WEIGHTS if k[0] == spec.path] + list(_WEIGHTS)[:-3]:
        _WEIGHTS.pop(old, None)                      # an older version; at most 4 SAEs kept
    _WEIGHTS[key] = w
    return w


def hook_width(spec: SaeSpec, handle) -> int:
    """The width of the activation the SAE reads in this model."""
    if spec.site == Z:
        return handle.head_dim if spec.head is not None else handle.n_heads * handle.head_dim
    return handle.d_mlp if spec.site == MLP_POST else handle.d_model


def check_model(spec: SaeSpec, handle) -> None:
    """One-line errors when the SAE does not fit the model."""
    if not 0 <= spec.layer < handle.n_layers:
        _bad(spec.path, f"its hook {spec.hook} names layer {spec.layer}; this model has "
             f"layers 0-{handle.n_layers - 1}")
    if spec.head is not None and not 0 <= spec.head < handle.n_heads:
        _bad(spec.path, f"its hook_head_index {spec.head} is out of range; this model has "
             f"heads 0-{handle.n_heads - 1}")
    width = hook_width(spec, handle)
    if spec.d_in != width:
        _bad(spec.path, f"d_in is {spec.d_in} but {spec.hook} is {width} wide in this model; "
             "use the SAE trained on this model")


def encoder_input(spec: SaeSpec, w: dict, x, ops):
    """The hooked activation ``x`` (..., width) as the encoder reads it: the SAE's head
    of a flattened hook_z, the input normalisation, minus ``b_dec`` where applied."""
    if spec.head is not None:                        # one head of the flattened hook_z
        x = x[..., spec.head * spec.d_in:(spec.head + 1) * spec.d_in]
    if spec.normalize == "constant_norm_rescale":
        x = x * (math.sqrt(spec.d_in) / ops.norm(x))[..., None]
    elif spec.normalize == "layer_norm":            # unbiased std, eps added to it (SAELens)
        x = x - ops.mean(x)[..., None]
        std = (ops.mean(x * x) * (spec.d_in / (spec.d_in - 1))) ** 0.5
        x = x / (std + 1e-5)[..., None]
    if spec.apply_b_dec_to_input and spec.subtract_b_dec:
        x = x - w["b_dec"]
    return x


def _pre(spec: SaeSpec, w: dict, x, ops, out=None):
    """The encoder's pre-activations of the hooked ``x``; ``out``: a torch buffer for them
    (``targets.kinds`` torch ``affine``)."""
    args = (encoder_input(spec, w, x, ops), w["W_enc"], w["b_enc"])
    return ops.affine(*args) if out is None else ops.affine(*args, out=out)


def topk_scores(spec: SaeSpec, w: dict, x, ops, out=None):
    """A TopK SAE's scores h (..., d_sae) of the hooked ``x``: its features are the ReLU of
    the k largest, the others 0.  ``out``: a torch buffer to compute them in."""
    h = _pre(spec, w, x, ops, out)
    if "dec_norm" not in w:
        return h
    return h * w["dec_norm"] if out is None else h.mul_(w["dec_norm"])


def relu_entries(spec: SaeSpec, w: dict, x, ops, out=None):
    """A standard or JumpReLU SAE's features of the hooked torch ``x`` (no gradient) as
    ``encode`` gives them, (..., d_sae), and (row, feature, value) of the nonzero ones
    (rows of the flattened leading axes, ascending): a feature is its pre-activation h
    where h > 0 and h > its threshold, else 0.  One compare and a scan of the mask, where
    encode takes three passes and the miner a scan of the result.  None for the other
    architectures, and when h is not all finite (then encode, whose NaN propagate).
    ``out``: a buffer (rows, d_sae) to compute them in."""
    if spec.architecture not in ("standard", "jumprelu"):
        return None
    import torch
    h = _pre(spec, w, x, ops, out)
    if not bool(h.sum().isfinite()):              # (a finite sum: every entry finite)
        return None
    flat = h.reshape(-1, spec.d_sae)
    lim = w["threshold"].clamp(min=0) if spec.architecture == "jumprelu" else \
        flat.new_zeros(())                         # h > 0 and h > threshold: h > max(t, 0)
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
        # (numpy's compare: twice torch's speed)
        at = torch.from_numpy(np.flatnonzero(np.greater(flat.numpy(), lim.numpy())))
    else:
        at = torch.nonzero((flat > lim).view(-1)).squeeze(1)
    rows, feats = at // spec.d_sae, at % spec.d_sae
    vals = flat.view(-1)[at]
    flat.zero_().view(-1)[at] = vals               # h is ours: the features in place
    return flat.view(h.shape), rows, feats, vals


def encode(spec: SaeSpec, w: dict, x, ops, index=None):
    """Feature activations of the hooked activation ``x`` (..., width): all of them
    (..., d_sae) when ``index`` is None, else feature ``index`` (...,).  ``w``: the weights
    of ``load_weights`` as arrays of x's framework (torch or JAX), ``ops`` its
    ``targets.kinds.Ops``.  Outside TopK a feature needs only its own encoder column."""
    if spec.architecture == "topk":                  # the k largest, then ReLU (SAELens)
        acts = ops.topk_relu(topk_scores(spec, w, x, ops), spec.k)
        return acts if index is None else acts[..., index]
    x = encoder_input(spec, w, x, ops)
    col = (lambda name: w[name]) if index is None else (lambda name: w[name][..., index])
    if spec.architecture == "gated":
        gate = ops.affine(x, col("W_enc"), col("b_gate"))
        mag = ops.affine(x, col("W_mag"), col("b_mag"))
        return ops.relu(mag) * (gate > 0)
    h = ops.affine(x, col("W_enc"), col("b_enc"))
    if spec.architecture == "jumprelu":
        return ops.relu(h) * (h > col("threshold"))
    return ops.relu(h)

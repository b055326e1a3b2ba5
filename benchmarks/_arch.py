"""The embedded model's architecture without its weights, for machines the 98 MB GGUF
cannot reach (a GPU box): ``save_arch`` writes config + tokenizer (~4 MB) here;
``load_arch`` rebuilds the same network there with seeded random weights.  Speed does not
depend on the weights' values; activations and texts do, so only timings come from it."""
import os

import torch

import featviz


def save_arch(handle, folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    handle.model.config.save_pretrained(folder)
    handle.tokenizer.save_pretrained(folder)
    return folder


def load_arch(folder: str, device: str = "cpu", seed: int = 0):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    torch.manual_seed(seed)
    cfg = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(folder)
    return featviz.wrap_model(model.to(device), tok, name=f"{cfg.model_type}-random-weights")


def model_for(args):
    """The embedded model (default) or, with --arch DIR, its architecture with random weights."""
    if getattr(args, "arch", None):
        return load_arch(args.arch, args.device)
    h = featviz.load_model()
    return h if args.device == "cpu" else featviz.wrap_model(h.model.to(args.device), h.tokenizer,
                                                             name=h.name)

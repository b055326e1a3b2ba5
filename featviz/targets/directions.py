"""Residual-stream direction files (.npy / .safetensors), checked on load."""
from __future__ import annotations

import os

import numpy as np
import torch

from featviz.errors import FeatvizError


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

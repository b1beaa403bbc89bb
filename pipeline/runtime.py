"""Small runtime helpers shared by the stages: device choice, autocast precision, seeding."""
from __future__ import annotations

import random

import numpy as np
import torch

# Autocast dtype per precision name, as the features stage records it (and checkpoints copy it).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when there is one, else CPU; asking for CUDA without one is an error
    (silently falling back would make a GPU benchmark measure the CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return PRECISIONS[precision]


def precision_name(dtype: torch.dtype | None) -> str:
    return next(name for name, d in PRECISIONS.items() if d == dtype)

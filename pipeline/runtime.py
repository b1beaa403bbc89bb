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


TRAIN_PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: torch.device) -> bool:
    """Whether the device multiplies bf16 matrices in hardware: CUDA GPUs that support it, x86
    CPUs with AVX512-BF16 or AMX (bf16 matmuls ran 2.4x the fp32 speed on this project's 2-core
    Zen 4 VM). Elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":  # torch.cpu's private probes; a torch without them counts as no support
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
    return False


def training_autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of training passes (weights and optimiser stay float32): `auto` =
    bf16 where the device computes it natively, else float32 (None). fp16 is not offered:
    it would need loss scaling, and bf16 does not."""
    if precision not in TRAIN_PRECISIONS:
        raise ValueError(f"train.precision {precision!r}: use {' | '.join(TRAIN_PRECISIONS)}")
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    return PRECISIONS[precision]

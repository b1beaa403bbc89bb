"""Checkpoint = decoder weights + vocabulary (Vocab.payload: the word list, or the sentencepiece
model as base64 text) + resolved config + encoder identity (and its weights when fine-tuned).
Only tensors and plain Python types, so it loads with torch.load(weights_only=True): opening a
checkpoint can never execute code."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

FORMAT = "captioner-checkpoint-v1"


def save_checkpoint(path: str | Path, *, decoder_state: dict, decoder: dict, vocab: list[str] | dict,
                    encoder: dict, config: dict, encoder_state: dict | None = None,
                    extra: dict | None = None) -> None:
    payload: dict[str, Any] = {
        "format": FORMAT, "decoder_state": decoder_state, "decoder": decoder, "vocab": vocab,
        "encoder": encoder, "config": config, "encoder_state": encoder_state, "extra": extra or {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # a crash mid-save never leaves a half-written checkpoint


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: run `dvc repro train` first or pass the path of a trained model")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a captioner checkpoint (expected format {FORMAT!r})")
    return payload

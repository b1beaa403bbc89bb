"""Where a training batch's image features come from. The loop in pipeline.training.train is
the same for both: the features stage's cache (CachedFeatures, here) or images run through a
trainable encoder (pipeline.training.finetune.EncoderFeatures)."""
from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np
import torch


class FeatureSource(Protocol):
    """What the training loop asks of a source of features (see the module docstring)."""
    feature_shape: tuple[int, ...]  # (D,) pooled or (C, h, w) spatial

    def param_groups(self) -> list[dict]: ...  # optimiser groups beyond the decoder's
    def train(self, mode: bool = True) -> None: ...
    def batches(self, pair_rows: np.ndarray, batches: list[torch.Tensor], device: torch.device
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...  # (pair indices, features)
    def val_features(self, n: int, device: torch.device) -> tuple[torch.Tensor, list[int]]: ...
    def checkpoint_parts(self) -> dict: ...  # encoder info (+ encoder_state) for save_checkpoint


class CachedFeatures:
    """Features precomputed by the features stage: nothing to train on the encoder side.
    Pooled vectors (N, D) or spatial maps (N, C, h, w), kept in the cache's float16 (the
    decoders cast each batch to float32): 6000 maps of 7x7x432 are 250 MB instead of 500."""

    def __init__(self, train_features: torch.Tensor, val_features: torch.Tensor, encoder_info: dict):
        self.train_features, self.val, self.encoder_info = train_features, val_features, encoder_info
        self.feature_shape = tuple(train_features.shape[1:])

    def param_groups(self) -> list[dict]:
        return []

    def train(self, mode: bool = True) -> None:
        pass

    def batches(self, pair_rows, batches, device):
        self.train_features = self.train_features.to(device)  # once: a no-op from then on
        for idx in batches:
            yield idx, self.train_features[torch.as_tensor(pair_rows[idx.numpy()], device=device)]

    def val_features(self, n, device):
        self.val = self.val.to(device)
        return self.val[:n], list(range(min(n, len(self.val))))

    def checkpoint_parts(self) -> dict:
        return {"encoder": self.encoder_info}

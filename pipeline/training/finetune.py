"""End-to-end fine-tuning (`train.finetune: true`): the encoder's last blocks train together
with the decoder, on images instead of cached features. Only the feature source differs
from cached training; the loop is pipeline.training.train.fit.

The checkpoint then carries the fine-tuned encoder weights (`encoder_state`) and a fingerprint
that differs from the feature cache's, so nothing reads stale cached features for it."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from pipeline.data.images import ImageDataset, collate_images, make_loader
from pipeline.data.manifest import RootGuard
from pipeline.data.vocab import Vocab
from pipeline.encoders import Encoder, EncoderConfig, build_encoder
from pipeline.hashing import state_digest
from pipeline.training.train import TrainConfig, fit

logger = logging.getLogger(__name__)


def round_like_cache(features: torch.Tensor) -> torch.Tensor:
    """Values rounded to float16 as in the feature cache (and as the Captioner rounds at
    inference), so the decoder trains on what it will see. The gradient passes straight
    through in float32: a float16 cast in the backward pass would flush small gradients to 0."""
    exact = features.detach()
    return features + (exact.half().float() - exact)


class EncoderFeatures:
    """Features computed from images by an encoder whose last `cfg.unfreeze_blocks` blocks train
    (learning rate `cfg.encoder_lr`); DataLoader workers decode the images of the next batch."""

    def __init__(self, encoder: Encoder, train_paths: list[Path], val_paths: list[Path], cfg: TrainConfig):
        if cfg.finetune_workers < 0:
            raise ValueError(f"train.finetune_workers must be >= 0, got {cfg.finetune_workers}")
        self.encoder, self.train_paths, self.val_paths = encoder, train_paths, val_paths
        self.feature_shape = (encoder.feature_dim,)  # pooled: fine-tuning feeds the show_tell decoder
        self.base_fingerprint = encoder.fingerprint
        self.cfg = cfg
        self.trainable = encoder.unfreeze_last(cfg.unfreeze_blocks)
        self._warned: set[int] = set()
        logger.info("fine-tuning %s: last %d block(s), %d trainable encoder parameters, encoder lr %g",
                    encoder.name, cfg.unfreeze_blocks, sum(p.numel() for p in self.trainable), cfg.encoder_lr)

    def param_groups(self) -> list[dict]:
        return [{"params": self.trainable, "lr": self.cfg.encoder_lr}] if self.trainable else []

    def train(self, mode: bool = True) -> None:
        self.encoder.train(mode)  # Encoder.train keeps the frozen blocks' batch-norm in eval mode

    def batches(self, pair_rows: np.ndarray, batches: list[torch.Tensor], device: torch.device
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.encoder.to(device)
        # Each image once per batch, even when several of its captions share the batch.
        image_rows = [np.unique(pair_rows[idx.numpy()]).tolist() for idx in batches]
        loader = DataLoader(ImageDataset(self.train_paths, self.encoder.preprocess), batch_sampler=image_rows,
                            num_workers=self.cfg.finetune_workers, collate_fn=collate_images,
                            pin_memory=device.type == "cuda")
        for idx, batch in zip(batches, loader):  # the loader keeps the order of its batch_sampler
            self._warn(self.train_paths, batch.failures)
            if batch.images is None:
                continue
            position = {row: j for j, row in enumerate(batch.indices)}
            rows = pair_rows[idx.numpy()]
            keep = [i for i, row in enumerate(rows) if row in position]  # drop captions of unreadable images
            take = torch.tensor([position[rows[i]] for i in keep], device=device)
            features = round_like_cache(self.encoder(batch.images.to(device, non_blocking=True)))
            yield idx[keep], features[take]

    @torch.inference_mode()
    def val_features(self, n: int, device: torch.device) -> tuple[torch.Tensor, list[int]]:
        """The first n val images through the CURRENT encoder (eval mode), as the Captioner would."""
        self.encoder.to(device).eval()
        loader = make_loader(self.val_paths[:n], self.encoder.preprocess, self.cfg.batch_size,
                             self.cfg.finetune_workers, pin_memory=device.type == "cuda")
        features, kept = [], []
        for batch in loader:
            self._warn(self.val_paths, batch.failures)
            if batch.images is not None:
                features.append(self.encoder(batch.images.to(device, non_blocking=True)).half().float())
                kept += batch.indices
        if not features:
            raise ValueError("no validation image could be read: check the images under the data root "
                             "(the features stage's errors file lists unreadable ones)")
        return torch.cat(features), kept

    def checkpoint_parts(self) -> dict:
        state = self.encoder.encoder_state_dict()
        info = {"name": self.encoder.name, "weights": self.encoder.weights,
                # Not the cache's fingerprint: features of this encoder are not in any cache.
                "fingerprint": f"{self.base_fingerprint}+finetuned-{state_digest(state)}",
                "base_fingerprint": self.base_fingerprint, "unfreeze_blocks": self.cfg.unfreeze_blocks,
                "preprocess": self.encoder.preprocess.to_dict(), "feature_dim": self.encoder.feature_dim}
        return {"encoder": info, "encoder_state": state}

    def _warn(self, paths: list[Path], failures: list[tuple[int, str]]) -> None:
        for index, reason in failures:
            if index not in self._warned:  # once per image, not once per epoch
                self._warned.add(index)
                logger.warning("skipping unreadable image %s: %s", paths[index], reason)


def finetune(train_rows: pd.DataFrame, val_rows: pd.DataFrame, root: str | Path, vocab: Vocab,
             cfg: TrainConfig, encoder_cfg: EncoderConfig, out_path: Path,
             log_metric: Callable[[dict], None] = lambda m: None) -> dict:
    """Train decoder + the encoder's last blocks on the images of the manifest rows (paths
    relative to `root`); the checkpoint carries the fine-tuned encoder."""
    guard = RootGuard(root)

    def paths(rows: pd.DataFrame) -> list[Path]:
        return [guard.join(rel, where=f"image {image_id}") for image_id, rel in zip(rows.image_id, rows.path)]

    source = EncoderFeatures(build_encoder(encoder_cfg), paths(train_rows), paths(val_rows), cfg)
    return fit(source, train_rows, val_rows, vocab, cfg, out_path, log_metric)

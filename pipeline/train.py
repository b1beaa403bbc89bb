"""One plain training loop: teacher forcing on cached features, a free-running validation
score every epoch (not just the loss) for early stopping, best checkpoint kept, timings logged."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.checkpoint import save_checkpoint
from pipeline.decoding import decode
from pipeline.metrics import quick_score
from pipeline.model import CaptionDecoder, DecoderConfig
from pipeline.runtime import resolve_device, seed_everything
from pipeline.vocab import Vocab

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig(DecoderConfig):
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    epochs: int = 30
    patience: int = 5  # epochs without a better validation score before stopping
    max_len: int = 22  # tokens incl. <start>/<end>; longer captions are truncated
    grad_clip: float = 5.0
    val_metric: str = "cider"  # free-running greedy score used for model selection: cider | bleu_4
    val_max_images: int = 0  # 0 = all validation images
    seed: int = 0
    device: str = "auto"
    finetune: bool = False  # train the encoder's last blocks end to end on images
    unfreeze_blocks: int = 2
    encoder_lr: float = 1e-4
    finetune_workers: int = 2

    def decoder_config(self) -> DecoderConfig:
        return DecoderConfig(**{f.name: getattr(self, f.name) for f in fields(DecoderConfig)})


def caption_pairs(manifest: pd.DataFrame, vocab: Vocab, max_len: int) -> tuple[np.ndarray, torch.Tensor]:
    """Every (image, caption) pair of the manifest rows: image row index + padded token ids."""
    rows, encoded = [], []
    for i, captions in enumerate(manifest["captions"]):
        for caption in captions:
            rows.append(i)
            encoded.append(vocab.encode(caption, max_len))
    tokens = torch.full((len(encoded), max(map(len, encoded))), vocab.pad_id, dtype=torch.long)
    for j, ids in enumerate(encoded):
        tokens[j, : len(ids)] = torch.tensor(ids)
    return np.asarray(rows), tokens


def length_bucketed_batches(lengths: torch.Tensor, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled batches of caption pairs of similar length: padding to the longest caption of
    a batch costs LSTM steps, and on a CPU those steps are most of the training time."""
    order = torch.randperm(len(lengths), generator=generator)
    chunk = batch_size * 32  # sort within random chunks so batches stay random across epochs
    batches = []
    for lo in range(0, len(order), chunk):
        part = order[lo: lo + chunk]
        part = part[torch.argsort(lengths[part], stable=True)]
        batches += list(part.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator)]


def validation_score(decoder: CaptionDecoder, features: torch.Tensor, references: list[list[str]],
                     vocab: Vocab, cfg: TrainConfig, batch_size: int = 512) -> float:
    hyps = {}
    for lo in range(0, len(features), batch_size):
        out = decode(decoder, features[lo: lo + batch_size], vocab.start_id, vocab.end_id, cfg.max_len)
        for j, tokens in enumerate(out.tokens):
            hyps[str(lo + j)] = vocab.decode(tokens)
    refs = {str(i): r for i, r in enumerate(references)}
    return quick_score(refs, hyps, metric=cfg.val_metric)


def train(train_rows: pd.DataFrame, train_features: torch.Tensor, val_rows: pd.DataFrame,
          val_features: torch.Tensor, vocab: Vocab, cfg: TrainConfig, out_path: Path,
          encoder_info: dict, log_metric: Callable[[dict], None] = lambda m: None) -> dict:
    """Train the decoder; keep the checkpoint of the epoch with the best validation score."""
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    pair_rows, tokens = caption_pairs(train_rows, vocab, cfg.max_len)
    lengths = (tokens != vocab.pad_id).sum(1)
    train_features = train_features.to(device)
    val_features = val_features.to(device)
    if cfg.val_max_images:
        val_features, val_rows = val_features[: cfg.val_max_images], val_rows.iloc[: cfg.val_max_images]
    val_refs = list(val_rows["captions"])
    decoder = CaptionDecoder(train_features.shape[1], len(vocab), cfg.decoder_config()).to(device)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(pair_rows) / cfg.batch_size)
    # Cosine decay over the planned epochs: a constant LR plateaus early on small data.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=steps_per_epoch * cfg.epochs, pct_start=0.1)
    loss_fn = nn.CrossEntropyLoss(ignore_index=vocab.pad_id)
    generator = torch.Generator().manual_seed(cfg.seed)
    logger.info("train: %d images, %d caption pairs, %d val images, vocab %d, device %s",
                len(train_rows), len(pair_rows), len(val_rows), len(vocab), device)

    best, best_epoch, history = -math.inf, -1, []
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.time()
        decoder.train()
        total, count = 0.0, 0
        for idx in length_bucketed_batches(lengths, cfg.batch_size, generator):
            if len(idx) < 2:  # BatchNorm cannot train on a single sample
                continue
            feats = train_features[torch.as_tensor(pair_rows[idx.numpy()], device=device)]
            caps = tokens[idx].to(device)
            caps = caps[:, : int((caps != vocab.pad_id).sum(1).max())]  # trim padding columns
            logits = decoder(feats, caps)
            loss = loss_fn(logits.reshape(-1, logits.shape[-1]), caps[:, 1:].reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(decoder.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            total, count = total + loss.item() * len(idx), count + len(idx)
        train_time = time.time() - t0

        score = validation_score(decoder, val_features, val_refs, vocab, cfg)
        record = {"epoch": epoch, "train_loss": total / max(count, 1), f"val_{cfg.val_metric}": score,
                  "epoch_seconds": time.time() - t0, "train_seconds": train_time}
        history.append(record)
        log_metric(record)
        logger.info("epoch %d: loss %.3f, val %s %.4f (%.1fs)", epoch, record["train_loss"],
                    cfg.val_metric, score, record["epoch_seconds"])
        if score > best:
            best, best_epoch = score, epoch
            save_checkpoint(
                out_path, decoder_state={k: v.cpu() for k, v in decoder.state_dict().items()},
                decoder=decoder.describe(), vocab=vocab.to_list(), encoder=encoder_info,
                config=asdict(cfg), extra={"epoch": epoch, f"val_{cfg.val_metric}": score})
        elif epoch - best_epoch >= cfg.patience:
            logger.info("early stop: no better val %s for %d epochs", cfg.val_metric, cfg.patience)
            break
    return {"best_epoch": best_epoch, f"best_val_{cfg.val_metric}": best, "epochs_run": len(history),
            "history": history}

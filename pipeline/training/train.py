"""One plain training loop: teacher forcing on image features (cached, or from a trainable
encoder when fine-tuning: see pipeline.training.finetune), a free-running validation score every epoch
(not just the loss) for early stopping, best checkpoint kept, timings logged."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.data.vocab import Vocab
from pipeline.decoders import DECODERS, DecoderConfig, build_decoder
from pipeline.decoders.search import decode
from pipeline.evaluation.metrics import quick_score
from pipeline.runtime import resolve_device, seed_everything
from pipeline.training.scst import CiderD, reference_tokens, scst_epoch

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig(DecoderConfig):
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 64  # small batches: more updates per CPU second, which is what this model lacks
    epochs: int = 12
    # Epochs the learning-rate schedule is planned over (0 = `epochs`). Larger than `epochs` stops
    # the one-cycle schedule before its end: on the default, validation peaks at epoch 3 of a
    # 4-epoch schedule, so running the 4th only to discard it costs a minute (README: Performance).
    schedule_epochs: int = 0
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
    # Self-critical sequence training after cross-entropy (pipeline/training/scst.py): CIDEr-D reward,
    # baseline = mean reward of the image's other samples. 0 epochs = off.
    scst_epochs: int = 0
    scst_lr: float = 5e-5
    scst_samples: int = 5
    scst_batch_size: int = 64  # images per step (x scst_samples sampled captions)

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


class FeatureSource(Protocol):
    """Where a batch's image features come from: the cache (CachedFeatures) or images run
    through a trainable encoder (pipeline.training.finetune.EncoderFeatures). The loop is the same."""
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


def banned_ids(vocab: Vocab) -> tuple[int, ...]:
    """Tokens a caption must never contain: decoding masks them (no `<unk>` reaches a user)."""
    return (vocab.pad_id, vocab.start_id, vocab.unk_id)


def validation_score(decoder: torch.nn.Module, features: torch.Tensor, references: list[list[str]],
                     vocab: Vocab, cfg: TrainConfig, batch_size: int = 512) -> float:
    hyps = {}
    for lo in range(0, len(features), batch_size):
        out = decode(decoder, features[lo: lo + batch_size], vocab.start_id, vocab.end_id, cfg.max_len,
                     banned_ids=banned_ids(vocab))
        for j, tokens in enumerate(out.tokens):
            hyps[str(lo + j)] = vocab.decode(tokens)
    refs = {str(i): r for i, r in enumerate(references)}
    return quick_score(refs, hyps, metric=cfg.val_metric)


def train(train_rows: pd.DataFrame, train_features: torch.Tensor, val_rows: pd.DataFrame,
          val_features: torch.Tensor, vocab: Vocab, cfg: TrainConfig, out_path: Path,
          encoder_info: dict, log_metric: Callable[[dict], None] = lambda m: None) -> dict:
    """Train the decoder on cached features (row i of *_features belongs to row i of *_rows)."""
    return fit(CachedFeatures(train_features, val_features, encoder_info), train_rows, val_rows,
               vocab, cfg, out_path, log_metric)


def fit(source: FeatureSource, train_rows: pd.DataFrame, val_rows: pd.DataFrame, vocab: Vocab,
        cfg: TrainConfig, out_path: Path, log_metric: Callable[[dict], None] = lambda m: None) -> dict:
    """Train the decoder (and whatever `source` trains); keep the checkpoint of the epoch with
    the best free-running validation score."""
    if len(train_rows) < 2 or len(val_rows) == 0:
        raise ValueError(f"training needs >= 2 train and >= 1 validation images, the manifest has "
                         f"{len(train_rows)} and {len(val_rows)}: raise data.val_fraction or add images")
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    pair_rows, tokens = caption_pairs(train_rows, vocab, cfg.max_len)
    lengths = (tokens != vocab.pad_id).sum(1)
    n_val = cfg.val_max_images or len(val_rows)
    val_refs = list(val_rows["captions"].iloc[:n_val])
    decoder = build_decoder(cfg.decoder_config(), source.feature_shape, len(vocab)).to(device)
    groups = [{"params": list(decoder.parameters()), "lr": cfg.lr}, *source.param_groups()]
    trainable = [p for group in groups for p in group["params"]]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.schedule_epochs and cfg.schedule_epochs < cfg.epochs:
        raise ValueError(f"train.schedule_epochs ({cfg.schedule_epochs}) must be 0 or at least train.epochs "
                         f"({cfg.epochs}): the schedule cannot end before training does")
    total_steps = math.ceil(len(pair_rows) / cfg.batch_size) * (cfg.schedule_epochs or cfg.epochs)
    # Cosine decay over the planned epochs: a constant LR plateaus early on small data.
    # OneCycleLR divides by zero when its warm-up is exactly one step (10 steps in all): take two.
    warmup = 0.2 if total_steps == 10 else 0.1
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in groups], total_steps=total_steps, pct_start=warmup)
    loss_fn = nn.CrossEntropyLoss(ignore_index=vocab.pad_id)
    generator = torch.Generator().manual_seed(cfg.seed)
    logger.info("train: %d images, %d caption pairs, %d val images, vocab %d, device %s",
                len(train_rows), len(pair_rows), len(val_refs), len(vocab), device)

    def save(model: nn.Module, extra: dict) -> None:
        save_checkpoint(out_path, decoder_state={k: v.cpu() for k, v in model.state_dict().items()},
                        decoder=model.describe(), vocab=vocab.to_list(), config=asdict(cfg), extra=extra,
                        **source.checkpoint_parts())

    best, best_epoch, history = -math.inf, -1, []
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.time()
        decoder.train()
        source.train()
        total, count = 0.0, 0
        batches = [b for b in length_bucketed_batches(lengths, cfg.batch_size, generator) if len(b) >= 2]
        for idx, feats in source.batches(pair_rows, batches, device):
            if len(idx) < 2:  # BatchNorm cannot train on a single sample
                continue
            caps = tokens[idx].to(device)
            caps = caps[:, : int((caps != vocab.pad_id).sum(1).max())]  # trim padding columns
            logits = decoder(feats, caps)
            loss = loss_fn(logits.reshape(-1, logits.shape[-1]), caps[:, 1:].reshape(-1)) + decoder.aux_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            total, count = total + loss.item() * len(idx), count + len(idx)
        train_time = time.time() - t0

        source.train(False)
        val_features, kept = source.val_features(n_val, device)
        score = validation_score(decoder, val_features, [val_refs[i] for i in kept], vocab, cfg)
        record = {"epoch": epoch, "train_loss": total / max(count, 1), f"val_{cfg.val_metric}": score,
                  "epoch_seconds": time.time() - t0, "train_seconds": train_time}
        history.append(record)
        log_metric(record)
        logger.info("epoch %d: loss %.3f, val %s %.4f (%.1fs)", epoch, record["train_loss"],
                    cfg.val_metric, score, record["epoch_seconds"])
        if score > best:
            best, best_epoch = score, epoch
            save(decoder, {"epoch": epoch, f"val_{cfg.val_metric}": score})
        elif epoch - best_epoch >= cfg.patience:
            logger.info("early stop: no better val %s for %d epochs", cfg.val_metric, cfg.patience)
            break
    summary = {"best_epoch": best_epoch, f"best_val_{cfg.val_metric}": best, "epochs_run": len(history),
               "history": history, f"xe_best_val_{cfg.val_metric}": best}
    if cfg.scst_epochs:
        summary.update(self_critical(decoder, source, train_rows, val_refs, n_val, vocab, cfg, device,
                                     save, log_metric, best, len(history), out_path))
    return summary


def self_critical(decoder: nn.Module, source: FeatureSource, train_rows: pd.DataFrame, val_refs: list,
                  n_val: int, vocab: Vocab, cfg: TrainConfig, device: torch.device, save: Callable,
                  log_metric: Callable[[dict], None], best: float, epochs_done: int, out_path: Path) -> dict:
    """SCST epochs from the best cross-entropy checkpoint; a checkpoint is saved only when the
    validation score beats every earlier epoch, so SCST can never make the kept model worse."""
    if not isinstance(source, CachedFeatures):
        raise ValueError("train.scst_epochs needs cached features: set train.finetune: false or train.scst_epochs: 0")
    decoder.load_state_dict(load_checkpoint(out_path)["decoder_state"])
    train_refs = reference_tokens(list(train_rows["captions"]), vocab)
    scorer = CiderD(train_refs, end=vocab.end_id)  # document frequencies from the train references
    optimizer = torch.optim.Adam(decoder.parameters(), lr=cfg.scst_lr)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    best_epoch, history = None, []
    for epoch in range(epochs_done + 1, epochs_done + cfg.scst_epochs + 1):
        t0 = time.time()
        stats = scst_epoch(decoder, optimizer, source.train_features, train_refs, scorer,
                           start_id=vocab.start_id, end_id=vocab.end_id, max_len=cfg.max_len - 1,
                           n_samples=cfg.scst_samples, batch_size=cfg.scst_batch_size,
                           banned_ids=banned_ids(vocab), generator=generator, grad_clip=cfg.grad_clip)
        decoder.eval()
        val_features, kept = source.val_features(n_val, device)
        score = validation_score(decoder, val_features, [val_refs[i] for i in kept], vocab, cfg)
        record = {"epoch": epoch, "scst_reward": stats["reward"], f"val_{cfg.val_metric}": score,
                  "epoch_seconds": time.time() - t0, "train_seconds": stats["seconds"]}
        history.append(record)
        log_metric(record)
        logger.info("scst epoch %d: reward %.3f, val %s %.4f (%.1fs)", epoch, stats["reward"], cfg.val_metric,
                    score, record["epoch_seconds"])
        if score > best:
            best, best_epoch = score, epoch
            save(decoder, {"epoch": epoch, f"val_{cfg.val_metric}": score, "scst": True})
    return {f"best_val_{cfg.val_metric}": best, "scst_best_epoch": best_epoch, "scst_history": history}

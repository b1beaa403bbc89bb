"""One plain training loop: teacher forcing on image features (cached, or from a trainable
encoder when fine-tuning: see pipeline.training.finetune), a free-running validation score every epoch
(not just the loss) for early stopping, best checkpoint kept, timings logged.

Under torchrun the same loop is data-parallel (pipeline.distributed.ddp): every rank shuffles the
length-bucketed batches with the same seed and trains on its share of each batch, gradients are
averaged before every update (so an epoch has as many updates as with one process:
`train.batch_size` is the global batch of one update), and rank 0 alone validates, logs and
saves, its validation score broadcast so that every rank takes the same keep/stop decision.

Captions in several languages train one model (pipeline/training/languages.py): each caption
starts with its language token instead of <start>, `train.captions_per_language` bounds the
captions an epoch draws per image and language, and the validation score is the mean over
the model's languages of each language's score."""
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

from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.data.multilingual import banned_ids, caption_languages, start_id
from pipeline.data.vocab import Vocab
from pipeline.decoders import DECODERS, DecoderConfig, build_decoder
from pipeline.distributed.ddp import (all_sum, average_gradients, broadcast_module, is_main, rank_seed, shard,
                                      world_size)
from pipeline.runtime import precision_name, resolve_device, seed_everything, training_autocast_dtype
from pipeline.training.languages import (LanguageRewards, epoch_pairs, pair_groups, pairs_per_epoch,
                                         trained_languages, validation_references)
from pipeline.training.scst import scst_epoch
from pipeline.training.sources import CachedFeatures, FeatureSource
from pipeline.training.validation import validate

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig(DecoderConfig):
    lr: float = 2e-3
    weight_decay: float = 0.0
    # Captions per optimizer update, over all ranks (each of N ranks computes 1/N of each batch).
    batch_size: int = 64  # small batches: more updates per CPU second, which is what this model lacks
    # Captions of each image and language an epoch trains on, drawn afresh each epoch (0 = all):
    # 1 makes an epoch over 5 caption languages cost what one over English does (README:
    # Captions in several languages).
    captions_per_language: int = 0
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
    # Mixed precision of the training passes: auto = bf16 autocast where the hardware has bf16
    # (1.5x faster cross-entropy steps on the 2-core Zen 4 VM, README: Performance), else fp32.
    # Validation, evaluation and captioning always decode in float32.
    precision: str = "auto"
    finetune: bool = False  # train the encoder's last blocks end to end on images
    unfreeze_blocks: int = 2
    encoder_lr: float = 1e-4
    finetune_workers: int = 2
    # Self-critical sequence training after cross-entropy (pipeline/training/scst.py): CIDEr-D reward,
    # baseline = mean reward of the image's other samples. 0 epochs = off.
    scst_epochs: int = 0
    scst_lr: float = 5e-5
    scst_samples: int = 5
    scst_batch_size: int = 64  # images per step (x scst_samples sampled captions), over all ranks
    # Processes the train stage runs on: > 1 relaunches it under torchrun (README: Training on
    # several processes). Ignored when already under torchrun, which then sets the count.
    nproc: int = 1

    def decoder_config(self) -> DecoderConfig:
        return DecoderConfig(**{f.name: getattr(self, f.name) for f in fields(DecoderConfig)})


def fused_optimizer(device: torch.device) -> bool:
    return device.type in ("cpu", "cuda")  # the devices torch has fused Adam kernels for


def caption_pairs(manifest: pd.DataFrame, vocab: Vocab, max_len: int) -> tuple[np.ndarray, torch.Tensor]:
    """Every (image, caption) pair of the manifest rows: image row index + padded token ids.
    A multilingual vocabulary's captions start with their language token instead of <start>."""
    rows, encoded, cut = [], [], 0
    for i, (captions, codes) in enumerate(zip(manifest["captions"], caption_languages(manifest))):
        for caption, code in zip(captions, codes):
            rows.append(i)
            encoded.append(vocab.encode(caption, max_len))
            encoded[-1][0] = start_id(vocab, code)
            cut += len(encoded[-1]) == max_len and len(vocab.encode(caption)) > max_len
    if cut:  # a subword vocabulary spells a caption in more tokens than it has words
        logger.warning("%d of %d train captions (%.1f%%) have more than train.max_len=%d tokens with <start> and "
                       "<end> (%s vocabulary) and are cut: raise train.max_len to keep them whole",
                       cut, len(encoded), 100 * cut / len(encoded), max_len, vocab.kind)
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
    if world_size() > 1 and not isinstance(source, CachedFeatures):
        raise ValueError("train.finetune runs on one process (ranks would skip different unreadable images and "
                         "fall out of step): set train.nproc: 1 and run the stage without torchrun")
    seed_everything(rank_seed(cfg.seed))  # each rank its own dropout masks (weights: rank 0's, below)
    device = resolve_device(cfg.device)
    amp = training_autocast_dtype(cfg.precision, device)
    if cfg.captions_per_language < 0:
        raise ValueError(f"train.captions_per_language must be >= 0 (0 = all), got {cfg.captions_per_language}")
    languages = trained_languages(train_rows, vocab)
    pair_rows, tokens = caption_pairs(train_rows, vocab, cfg.max_len)
    lengths = (tokens != vocab.pad_id).sum(1)
    pair_group = pair_groups(train_rows) if cfg.captions_per_language else None  # (image, language) per pair
    n_pairs = len(pair_rows) if pair_group is None else pairs_per_epoch(pair_group, cfg.captions_per_language)
    n_val = cfg.val_max_images or len(val_rows)
    val_refs = validation_references(val_rows.iloc[:n_val], languages)
    decoder = build_decoder(cfg.decoder_config(), source.feature_shape, len(vocab)).to(device)
    if device.type == "cuda" and world_size() > 1:  # batch statistics over all ranks (needs GPUs; per rank on CPU)
        decoder = nn.SyncBatchNorm.convert_sync_batchnorm(decoder)
    broadcast_module(decoder)
    groups = [{"params": list(decoder.parameters()), "lr": cfg.lr}, *source.param_groups()]
    trainable = [p for group in groups for p in group["params"]]
    # fused: one kernel for every parameter's update, 5.1 -> 1.8 ms a step on 2 cores (bench/bench_train_step.py)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused_optimizer(device))
    if cfg.schedule_epochs and cfg.schedule_epochs < cfg.epochs:
        raise ValueError(f"train.schedule_epochs ({cfg.schedule_epochs}) must be 0 or at least train.epochs "
                         f"({cfg.epochs}): the schedule cannot end before training does")
    total_steps = math.ceil(n_pairs / cfg.batch_size) * (cfg.schedule_epochs or cfg.epochs)
    # Cosine decay over the planned epochs: a constant LR plateaus early on small data.
    # OneCycleLR divides by zero when its warm-up is exactly one step (10 steps in all): take two.
    warmup = 0.2 if total_steps == 10 else 0.1
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in groups], total_steps=total_steps, pct_start=warmup)
    loss_fn = nn.CrossEntropyLoss(ignore_index=vocab.pad_id)
    generator = torch.Generator().manual_seed(cfg.seed)
    logger.info("train: %d images, %d caption pairs (%d an epoch), %d val images, vocab %d, languages %s, device %s, "
                "precision %s", len(train_rows), len(pair_rows), n_pairs, min(n_val, len(val_rows)), len(vocab),
                ", ".join(languages), device, precision_name(amp))

    def save(model: nn.Module, extra: dict) -> None:
        if not is_main():
            return
        save_checkpoint(out_path, decoder_state={k: v.cpu() for k, v in model.state_dict().items()},
                        decoder=model.describe(), vocab=vocab.payload(), config=asdict(cfg),
                        extra={**extra, "languages": languages, "precision": precision_name(amp)},
                        **source.checkpoint_parts())

    best, best_epoch, history = -math.inf, -1, []
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.time()
        decoder.train()
        source.train()
        total, count = 0.0, 0
        # The same batches on every rank (same seed), each rank its share: 2 captions at least (BatchNorm).
        if pair_group is None:
            batches = length_bucketed_batches(lengths, cfg.batch_size, generator)
        else:  # this epoch's draw of captions_per_language pairs per image and language
            chosen = epoch_pairs(pair_group, cfg.captions_per_language, generator)
            batches = [chosen[b] for b in length_bucketed_batches(lengths[chosen], cfg.batch_size, generator)]
        batches = shard(batches, min_size=2)
        for idx, feats in source.batches(pair_rows, batches, device):
            if len(idx) < 2:  # BatchNorm cannot train on a single sample
                continue
            caps = tokens[idx].to(device)
            caps = caps[:, : int((caps != vocab.pad_id).sum(1).max())]  # trim padding columns
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = decoder(feats, caps)
            loss = loss_fn(logits.float().flatten(0, 1), caps[:, 1:].reshape(-1)) + decoder.aux_loss().float()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(trainable)
            nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            total, count = total + loss.item() * len(idx), count + len(idx)
        total, count = all_sum(total, count)
        train_time = time.time() - t0

        source.train(False)
        score = validate(decoder, source, n_val, val_refs, vocab, cfg, device)
        record = {"epoch": epoch, "train_loss": total / max(count, 1), f"val_{cfg.val_metric}": score,
                  "epoch_seconds": time.time() - t0, "train_seconds": train_time}
        history.append(record)
        if is_main():
            log_metric(record)
            logger.info("epoch %d: loss %.3f, val %s %.4f (%d updates, %.1fs)", epoch, record["train_loss"],
                        cfg.val_metric, score, len(batches), record["epoch_seconds"])
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
                                     save, log_metric, best, len(history), out_path, languages, amp))
    return summary


def self_critical(decoder: nn.Module, source: FeatureSource, train_rows: pd.DataFrame, val_refs: dict,
                  n_val: int, vocab: Vocab, cfg: TrainConfig, device: torch.device, save: Callable,
                  log_metric: Callable[[dict], None], best: float, epochs_done: int, out_path: Path,
                  languages: list[str], amp: torch.dtype | None = None) -> dict:
    """SCST epochs from the best cross-entropy checkpoint; a checkpoint is saved only when the
    validation score beats every earlier epoch, so SCST can never make the kept model worse.
    Each image is scored in one of the model's languages per epoch (LanguageRewards)."""
    if not isinstance(source, CachedFeatures):
        raise ValueError("train.scst_epochs needs cached features: set train.finetune: false or train.scst_epochs: 0")
    if is_main():
        decoder.load_state_dict(load_checkpoint(out_path)["decoder_state"])
    broadcast_module(decoder)  # every rank starts from rank 0's best epoch
    rewards = LanguageRewards(train_rows, vocab, languages)  # document frequencies from the train references
    optimizer = torch.optim.Adam(decoder.parameters(), lr=cfg.scst_lr, fused=fused_optimizer(device))
    generator = torch.Generator().manual_seed(rank_seed(cfg.seed + 1))  # each rank its own samples
    best_epoch, history = None, []
    for epoch in range(epochs_done + 1, epochs_done + cfg.scst_epochs + 1):
        t0 = time.time()
        # The reward counts words (split as the metrics split each language), whatever the kind.
        stats = scst_epoch(decoder, optimizer, source.train_features, end_id=vocab.end_id,
                           max_len=cfg.max_len - 1, n_samples=cfg.scst_samples, batch_size=cfg.scst_batch_size,
                           banned_ids=banned_ids(vocab), generator=generator, grad_clip=cfg.grad_clip,
                           amp_dtype=amp, **rewards.epoch(epoch))
        decoder.eval()
        score = validate(decoder, source, n_val, val_refs, vocab, cfg, device)
        record = {"epoch": epoch, "scst_reward": stats["reward"], f"val_{cfg.val_metric}": score,
                  "epoch_seconds": time.time() - t0, "train_seconds": stats["seconds"]}
        history.append(record)
        if is_main():
            log_metric(record)
            logger.info("scst epoch %d: reward %.3f, val %s %.4f (%.1fs)", epoch, stats["reward"], cfg.val_metric,
                        score, record["epoch_seconds"])
        if score > best:
            best, best_epoch = score, epoch
            save(decoder, {"epoch": epoch, f"val_{cfg.val_metric}": score, "scst": True})
    return {f"best_val_{cfg.val_metric}": best, "scst_best_epoch": best_epoch, "scst_history": history}

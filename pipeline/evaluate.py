"""Test-split evaluation: free-running decoding (greedy and beam) from the cached features,
the COCO caption metrics, diversity, a per-image table to sort by worst, and a caption sheet.
A checkpoint whose encoder is not the cache's (fine-tuned: it carries `encoder_state`) is
evaluated on features encoded from the image files by its own encoder instead."""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from pipeline.captioner import Captioner
from pipeline.features import FeatureTable
from pipeline.images import make_loader
from pipeline.manifest import RootGuard
from pipeline.metrics import diversity, java_available, meteor_jar, score_captions

logger = logging.getLogger(__name__)
SPLITS = ("test", "novel")  # novel: held-out attribute combinations, when the data set has them


@dataclass
class EvaluateConfig:
    beam_size: int = 3
    length_penalty: float = 0.7
    max_len: int = 20
    batch_size: int = 256
    image_batch_size: int = 32  # images per encoder forward when the cache cannot be used
    num_workers: int = 2  # image-decoding processes, same condition
    backend: str = "auto"  # coco (pycocoevalcap + Java) | python | auto
    sheet_images: int = 12


def generate(captioner: Captioner, features: torch.Tensor, beam_size: int, batch_size: int) -> tuple[list[str], list[float]]:
    captions, confidence = [], []
    for lo in range(0, len(features), batch_size):
        out = captioner.decode_features(features[lo: lo + batch_size], beam_size)
        captions += [captioner.vocab.decode(t) for t in out.tokens]
        confidence += out.mean_logprob
    return captions, confidence


def encode_images(captioner: Captioner, paths: Sequence[Path], batch_size: int, num_workers: int
                  ) -> tuple[torch.Tensor, list[int]]:
    """Features of the readable images among `paths` by the captioner's encoder (rounded as the
    cache is), and the indices of those images; unreadable ones are logged and left out."""
    features, kept = [], []
    for batch in make_loader(paths, captioner.preprocess, batch_size, num_workers):
        for index, reason in batch.failures:
            logger.warning("skipping unreadable image %s: %s", paths[index], reason)
        if batch.images is not None:
            features.append(captioner.encode(batch.images).cpu())
            kept += batch.indices
    dim = captioner.encoder.feature_dim
    return (torch.cat(features) if features else torch.empty(0, dim)), kept


def evaluate(captioner: Captioner, manifest: pd.DataFrame, table: FeatureTable,
             cfg: EvaluateConfig, image_root: str | Path | None = None) -> tuple[dict, pd.DataFrame, dict]:
    """Metrics per split and decoding ({"test": {"greedy": {...}, "beam": {...}}, ...}), the
    per-image table (beam captions with their scores) and what produced the figures.
    Features come from `table` when the checkpoint's encoder is the one that made it; otherwise
    (a fine-tuned encoder) from the images under `image_root`, encoded by the checkpoint's encoder."""
    manifest = manifest[manifest.image_id.isin(set(table.ids))]
    from_images = captioner.encoder_info.get("fingerprint") != table.meta.get("fingerprint")
    if from_images and image_root is None:
        raise ValueError(f"the checkpoint's encoder ({captioner.encoder_info.get('fingerprint')}) did not make "
                         f"the cached features ({table.meta.get('fingerprint')}): pass the data root so that "
                         f"evaluate can encode the images with it")
    guard = RootGuard(image_root) if from_images else None
    train_captions = [c for caps in manifest.loc[manifest.split == "train", "captions"] for c in caps]
    use_java = cfg.backend == "coco" or (cfg.backend == "auto" and java_available())
    metrics, tables, info = {}, [], {}
    # One METEOR JVM for every split and decoding: its start costs 10-30 s each time.
    with meteor_jar() if use_java else contextlib.nullcontext() as jar:
        for split in SPLITS:
            rows = manifest[manifest.split == split].reset_index(drop=True)
            if rows.empty:
                continue
            if guard is not None:
                paths = [guard.join(rel, where=f"image {i}") for i, rel in zip(rows.image_id, rows.path)]
                features, kept = encode_images(captioner, paths, cfg.image_batch_size, cfg.num_workers)
                rows = rows.iloc[kept].reset_index(drop=True)
                if rows.empty:
                    continue
            else:
                features = torch.from_numpy(table.lookup(list(rows.image_id)))
            refs = {i: list(c) for i, c in zip(rows.image_id, rows.captions)}
            metrics[split] = {}
            for decoding, beam in (("greedy", 1), ("beam", cfg.beam_size)):
                captions, confidence = generate(captioner, features, beam, cfg.batch_size)
                hyps = dict(zip(rows.image_id, captions))
                report = score_captions(refs, hyps, backend=cfg.backend, meteor=jar)
                metrics[split][decoding] = {**report.corpus, **diversity(hyps, train_captions)}
                info = {"implementation": report.implementation, "skipped": report.skipped,
                        "scale": report.scale, "backend": report.backend}
            per_image = pd.DataFrame({
                "split": split, "image_id": rows.image_id, "path": rows.path, "caption": captions,
                "mean_logprob": confidence, "references": list(refs.values()),
            })
            for metric in ("bleu_4", "meteor", "rouge_l", "cider"):
                per_image[metric] = [report.per_image[i].get(metric) for i in rows.image_id]
            tables.append(per_image)
    if "test" not in metrics:
        raise ValueError("the manifest has no test images: check data.test_fraction or the source's split files")
    n_images = {t.split.iloc[0]: len(t) for t in tables}
    info.update(n_images=n_images, beam_size=cfg.beam_size,
                features="images, encoded by the checkpoint's encoder" if from_images else "cache",
                encoder_fingerprint=captioner.encoder_info.get("fingerprint"),
                length_penalty=cfg.length_penalty, decoding="free-running (no teacher forcing)")
    return metrics, pd.concat(tables, ignore_index=True), info


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")

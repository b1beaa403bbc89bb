"""Test-split evaluation: free-running decoding (greedy and beam) from the cached features,
the COCO caption metrics, diversity, a per-image table to sort by worst, and a caption sheet.
Where the manifest carries the scenes' ground-truth objects, the grounded metric
(pipeline.evaluation.grounded) checks what each caption claims about its image, too.
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

from pipeline.data.images import make_loader
from pipeline.data.manifest import OBJECTS, RootGuard
from pipeline.evaluation.grounded import CaptionScore, aggregate, load_objects, score_caption
from pipeline.evaluation.metrics import diversity, java_available, meteor_jar, score_captions
from pipeline.features import FeatureTable
from pipeline.encoders.runtimes import check_runtime_name
from pipeline.inference.captioner import Captioner

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
    runtime: str = "auto"  # encoder runtime when images are encoded (pipeline/encoders/runtimes.py)

    def __post_init__(self) -> None:
        check_runtime_name(self.runtime, "evaluate.runtime")
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
    return (torch.cat(features) if features else torch.empty(0, *captioner.decoder.feature_shape)), kept


def check_cache_fits(captioner: Captioner, table: FeatureTable) -> bool:
    """True when the cache holds the checkpoint's own features; False when the checkpoint's
    encoder is another one (fine-tuned: evaluate encodes the images). Same encoder but other
    feature settings is the user's mistake, refused before any work, naming the param."""
    info, meta = captioner.encoder_info, table.meta
    if info.get("fingerprint") != meta.get("fingerprint"):
        return False
    for param, key in (("features.spatial", "spatial"), ("features.precision", "precision")):
        if info.get(key) is not None and info.get(key) != meta.get(key):
            raise ValueError(f"the checkpoint was trained on features made with {param}: {info[key]!r}, the "
                             f"features file holds {meta.get(key)!r}: set {param}: {info[key]} and rerun the "
                             f"features stage, or retrain (dvc repro)")
    return True


def evaluate(captioner: Captioner, manifest: pd.DataFrame, table: FeatureTable,
             cfg: EvaluateConfig, image_root: str | Path | None = None) -> tuple[dict, pd.DataFrame, dict]:
    """Metrics per split and decoding ({"test": {"greedy": {...}, "beam": {...}}, ...}), the
    per-image table (beam captions with their scores) and what produced the figures.
    Features come from `table` when the checkpoint's encoder is the one that made it; otherwise
    (a fine-tuned encoder) from the images under `image_root`, encoded by the checkpoint's encoder."""
    manifest = manifest[manifest.image_id.isin(set(table.ids))]
    from_images = not check_cache_fits(captioner, table)
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
                features = torch.from_numpy(table.lookup(list(rows.image_id), spatial=captioner.spatial))
            refs = {i: list(c) for i, c in zip(rows.image_id, rows.captions)}
            metrics[split] = {}
            for decoding, beam in (("greedy", 1), ("beam", cfg.beam_size)):
                captions, confidence = generate(captioner, features, beam, cfg.batch_size)
                hyps = dict(zip(rows.image_id, captions))
                report = score_captions(refs, hyps, backend=cfg.backend, meteor=jar)
                metrics[split][decoding] = {**report.corpus, **diversity(hyps, train_captions)}
                grounded = grounded_scores(rows, captions)
                if grounded is not None:
                    metrics[split][decoding]["grounded"] = aggregate([g for g in grounded if g is not None])
                info = {"implementation": report.implementation, "skipped": report.skipped,
                        "scale": report.scale, "backend": report.backend}
            per_image = pd.DataFrame({
                "split": split, "image_id": rows.image_id, "path": rows.path, "caption": captions,
                "mean_logprob": confidence, "references": list(refs.values()),
            })
            for metric in ("bleu_4", "meteor", "rouge_l", "cider"):
                per_image[metric] = [report.per_image[i].get(metric) for i in rows.image_id]
            if grounded is not None:  # of the beam captions, like the rest of the table
                per_image["object_precision"] = [g.object_precision if g else None for g in grounded]
                per_image["exact_set"] = [g.exact_set if g else None for g in grounded]
                per_image["wrong_words"] = [g.wrong_words if g else [] for g in grounded]
            tables.append(per_image)
    if "test" not in metrics:
        raise ValueError("the manifest has no test images: check data.test_fraction or the source's split files")
    n_images = {t.split.iloc[0]: len(t) for t in tables}
    info.update(n_images=n_images, beam_size=cfg.beam_size,
                features="images, encoded by the checkpoint's encoder" if from_images else "cache",
                encoder_fingerprint=captioner.encoder_info.get("fingerprint"),
                length_penalty=cfg.length_penalty, decoding="free-running (no teacher forcing)")
    return metrics, pd.concat(tables, ignore_index=True), info


def grounded_scores(rows: pd.DataFrame, captions: Sequence[str]) -> list[CaptionScore | None] | None:
    """Each caption checked against its image's objects (None for an image without them);
    None when no image of `rows` has objects (a data set other than the scenes)."""
    if OBJECTS not in rows.columns:
        return None
    objects = [load_objects(value) for value in rows[OBJECTS]]
    if not any(objects):
        return None
    return [score_caption(c, o) if o else None for c, o in zip(captions, objects)]


def sheet_items(per_image: pd.DataFrame, manifest: pd.DataFrame, root: str | Path, count: int) -> list[dict]:
    """The caption sheet's items: the first `count` test images, with the indices of the
    generated caption's words that the grounded metric finds wrong, where it applies."""
    guard = RootGuard(root)
    rows = per_image[per_image.split == "test"].head(count)
    objects = dict(zip(manifest.image_id, manifest[OBJECTS])) if OBJECTS in manifest.columns else {}
    items = []
    for r in rows.itertuples():
        item = {"image_path": guard.join(r.path), "image_id": r.image_id, "generated": r.caption,
                "references": list(r.references), "score": r.cider}
        truth = load_objects(objects.get(r.image_id))
        if truth:
            item["wrong"] = score_caption(r.caption, truth).wrong
        items.append(item)
    return items


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")

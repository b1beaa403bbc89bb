"""Test-split evaluation: free-running decoding (greedy and beam) from the cached features,
the COCO caption metrics, diversity, a per-image table to sort by worst, and a caption sheet."""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from pipeline.captioner import Captioner
from pipeline.metrics import diversity, score_captions

logger = logging.getLogger(__name__)


@dataclass
class EvaluateConfig:
    beam_size: int = 3
    length_penalty: float = 0.7
    max_len: int = 20
    batch_size: int = 256
    backend: str = "auto"  # coco (pycocoevalcap + Java) | python | auto
    sheet_images: int = 12


def generate(captioner: Captioner, features: torch.Tensor, beam_size: int, batch_size: int) -> tuple[list[str], list[float]]:
    captions, confidence = [], []
    for lo in range(0, len(features), batch_size):
        out = captioner.decode_features(features[lo: lo + batch_size], beam_size)
        captions += [captioner.vocab.decode(t) for t in out.tokens]
        confidence += out.mean_logprob
    return captions, confidence


def evaluate_split(captioner: Captioner, rows: pd.DataFrame, features: torch.Tensor,
                   cfg: EvaluateConfig, train_captions: list[str]) -> tuple[dict, pd.DataFrame, dict]:
    """Metrics for greedy and beam decoding of one split; the per-image table is for beam."""
    refs = {i: list(c) for i, c in zip(rows["image_id"], rows["captions"])}
    results, table, info = {}, None, {}
    for name, beam in (("greedy", 1), ("beam", cfg.beam_size)):
        captions, confidence = generate(captioner, features, beam, cfg.batch_size)
        hyps = dict(zip(rows["image_id"], captions))
        report = score_captions(refs, hyps, backend=cfg.backend)
        results[name] = {**report.corpus, **diversity(hyps, train_captions)}
        info = {"implementation": report.implementation, "skipped": report.skipped,
                "scale": getattr(report, "scale", "0-1")}
        if name == "beam" or table is None:
            table = pd.DataFrame({
                "image_id": rows["image_id"].values, "path": rows["path"].values, "caption": captions,
                "mean_logprob": confidence, "references": [list(c) for c in rows["captions"]],
            })
            for metric in ("bleu_4", "meteor", "rouge_l", "cider"):
                table[metric] = [report.per_image.get(i, {}).get(metric) for i in rows["image_id"]]
    return results, table, info


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def config_dict(cfg: EvaluateConfig) -> dict:
    return asdict(cfg)

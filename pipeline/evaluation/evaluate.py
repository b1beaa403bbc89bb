"""Test-split evaluation: free-running decoding (greedy and beam) from the cached features,
the COCO caption metrics, diversity, a per-image table to sort by worst, and a caption sheet.
Where the manifest carries the scenes' ground-truth objects, the grounded metric
(pipeline.evaluation.grounded) checks what each caption claims about its image, too.
A checkpoint whose encoder is not the cache's (fine-tuned: it carries `encoder_state`) is
evaluated on features encoded from the image files by its own encoder instead.

A model of several languages (pipeline/data/multilingual.py) is evaluated in each: the
top-level figures are its default language's (English when it has it), greedy and beam as for
a model of one language; every other language is decoded greedily only (five languages would
otherwise take five times as long) and scored against that language's captions only, under
metrics["by_language"][language][split]["greedy"]. Each language's text is split for scoring as
fits it (score_captions' `language`); eval_info's `languages` says how, per language."""
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
from pipeline.data.multilingual import ENGLISH, captions_in
from pipeline.evaluation.grounded import CaptionScore, aggregate, load_objects, score_caption
from pipeline.evaluation.lexicons import LEXICONS
from pipeline.evaluation.metrics import diversity, java_available, meteor_jar, score_captions
from pipeline.feature_table import FeatureTable
from pipeline.encoders.runtimes import check_runtime_name
from pipeline.inference.captioner import Captioner

logger = logging.getLogger(__name__)
SPLITS = ("test", "novel")  # novel: held-out attribute combinations, when the data set has them


@dataclass
class EvaluateConfig:
    beam_size: int = 3
    length_penalty: float = 0.7
    max_len: int = 20
    no_repeat_ngram: int = 0  # n > 0: no caption repeats n words (greedy and beam; README, Decoders); 0 = off
    batch_size: int = 256
    image_batch_size: int = 32  # images per encoder forward when the cache cannot be used
    num_workers: int = 2  # image-decoding processes, same condition
    runtime: str = "auto"  # encoder runtime when images are encoded (pipeline/encoders/runtimes.py)
    backend: str = "auto"  # coco (pycocoevalcap + Java) | python | auto
    sheet_images: int = 12

    def __post_init__(self) -> None:
        check_runtime_name(self.runtime, "evaluate.runtime")
        if self.no_repeat_ngram < 0:
            raise ValueError(f"evaluate.no_repeat_ngram must be >= 0 (0 = off), got {self.no_repeat_ngram}")


def generate(captioner: Captioner, features: torch.Tensor, beam_size: int, batch_size: int,
             language: str | None = None) -> tuple[list[str], list[float]]:
    """Captions of `features` in `language` (None: the captioner's own)."""
    captions, confidence = [], []
    asked = {} if language is None else {"language": language}
    for lo in range(0, len(features), batch_size):
        out = captioner.decode_features(features[lo: lo + batch_size], beam_size, **asked)
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
    """Metrics per split and decoding ({"test": {"greedy": {...}, "beam": {...}}, ...}, and
    "by_language" for a model of several languages), the per-image table (beam captions with
    their scores, and the greedy ones with their grounded verdict; greedy ones for the other
    languages) and what produced the figures.
    Features come from `table` when the checkpoint's encoder is the one that made it; otherwise
    (a fine-tuned encoder) from the images under `image_root`, encoded by the checkpoint's encoder."""
    manifest = manifest[manifest.image_id.isin(set(table.ids))]
    from_images = not check_cache_fits(captioner, table)
    if from_images and image_root is None:
        raise ValueError(f"the checkpoint's encoder ({captioner.encoder_info.get('fingerprint')}) did not make "
                         f"the cached features ({table.meta.get('fingerprint')}): pass the data root so that "
                         f"evaluate can encode the images with it")
    guard = RootGuard(image_root) if from_images else None
    # Captioner-like objects without languages (older callers, test doubles) caption in English.
    languages, ask = list(getattr(captioner, "languages", None) or [ENGLISH]), hasattr(captioner, "languages")
    train_rows = manifest[manifest.split == "train"]
    use_java = cfg.backend == "coco" or (cfg.backend == "auto" and java_available())
    metrics, tables, info, by_language, n_images = {}, [], {}, {}, {}
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
            for language in languages:
                default = language == languages[0]
                decodings = (("greedy", 1), ("beam", cfg.beam_size)) if default else (("greedy", 1),)
                scored = score_language(captioner, rows, features, train_rows, language, decodings, cfg, jar,
                                        asked=language if ask else None)
                if scored is None:  # no image of the split has a caption in this language
                    continue
                figures, per_image, report_info = scored
                if languages != [ENGLISH]:
                    per_image.insert(1, "language", language)
                tables.append(per_image)
                if default:
                    metrics[split], info, n_images[split] = figures, report_info, len(per_image)
                else:
                    metrics.setdefault("by_language", {}).setdefault(language, {})[split] = figures
                by_language[language] = {"tokenizer": report_info["implementation"].get("tokenizer"),
                                         "backend": report_info["backend"], "skipped": report_info["skipped"],
                                         "decodings": [name for name, _ in decodings]}
    if "test" not in metrics:
        raise ValueError("the manifest has no test images: check data.test_fraction or the source's split files")
    info.update(n_images=n_images, beam_size=cfg.beam_size,
                features="images, encoded by the checkpoint's encoder" if from_images else "cache",
                encoder_fingerprint=captioner.encoder_info.get("fingerprint"),
                length_penalty=cfg.length_penalty, decoding="free-running (no teacher forcing)",
                **({"no_repeat_ngram": cfg.no_repeat_ngram} if cfg.no_repeat_ngram else {}))
    if languages != [ENGLISH]:  # an English-only eval_info.json stays as it was
        info.update(default_language=languages[0], languages=by_language)
    return metrics, pd.concat(tables, ignore_index=True), info


def score_language(captioner: Captioner, rows: pd.DataFrame, features: torch.Tensor, train_rows: pd.DataFrame,
                   language: str, decodings: Sequence[tuple[str, int]], cfg: EvaluateConfig, jar,
                   asked: str | None) -> tuple[dict, pd.DataFrame, dict] | None:
    """One split in one language: captions of the images that have captions in it, for each
    decoding (name, beam size), scored against those captions only. Returns the figures per
    decoding, the per-image table of the last decoding (with `<decoding>_caption`, `_exact_set`
    and `_wrong_words` columns of the earlier ones) and what produced the figures; None when
    no image has a caption in `language`. `asked`: the language to ask the captioner for (None:
    its default)."""
    refs_in = captions_in(rows, language)
    have = [j for j, refs in enumerate(refs_in) if refs]
    if not have:
        return None
    if len(have) < len(rows):
        rows, features, refs_in = rows.iloc[have].reset_index(drop=True), features[have], [refs_in[j] for j in have]
    refs = dict(zip(rows.image_id, refs_in))
    train_captions = [c for captions in captions_in(train_rows, language) for c in captions]
    figures, outputs = {}, {}
    for decoding, beam in decodings:
        captions, confidence = generate(captioner, features, beam, cfg.batch_size, asked)
        hyps = dict(zip(rows.image_id, captions))
        report = score_captions(refs, hyps, backend=cfg.backend, meteor=jar, language=language)
        figures[decoding] = {**report.corpus, **diversity(hyps, train_captions, language)}
        grounded = grounded_scores(rows, captions, language)
        if grounded is not None:
            figures[decoding]["grounded"] = aggregate([g for g in grounded if g is not None])
        outputs[decoding] = captions, grounded
    per_image = pd.DataFrame({
        "split": rows.split.iloc[0], "image_id": rows.image_id, "path": rows.path, "caption": captions,
        "mean_logprob": confidence, "references": list(refs.values()),
    })
    for metric in ("bleu_4", "meteor", "rouge_l", "cider"):
        per_image[metric] = [report.per_image[i].get(metric) for i in rows.image_id]
    if grounded is not None:  # of the last decoding's captions, like the rest of the table
        per_image["object_precision"] = [g.object_precision if g else None for g in grounded]
        per_image["exact_set"] = [g.exact_set if g else None for g in grounded]
        per_image["wrong_words"] = [g.wrong_words if g else [] for g in grounded]
    # The earlier decodings' captions too (greedy beside beam), each with its grounded verdict.
    for other, (other_captions, other_grounded) in list(outputs.items())[:-1]:
        per_image[f"{other}_caption"] = other_captions
        if other_grounded is not None:
            per_image[f"{other}_exact_set"] = [g.exact_set if g else None for g in other_grounded]
            per_image[f"{other}_wrong_words"] = [g.wrong_words if g else [] for g in other_grounded]
    info = {"implementation": report.implementation, "skipped": report.skipped, "scale": report.scale,
            "backend": report.backend}
    return figures, per_image, info


def grounded_scores(rows: pd.DataFrame, captions: Sequence[str],
                    language: str = ENGLISH) -> list[CaptionScore | None] | None:
    """Each caption (in `language`) checked against its image's objects (None for an image
    without them); None when no image of `rows` has objects (a data set other than the scenes)
    or the metric cannot read the language (it reads the scenes' languages)."""
    if OBJECTS not in rows.columns or language not in LEXICONS:
        return None
    objects = [load_objects(value) for value in rows[OBJECTS]]
    if not any(objects):
        return None
    return [score_caption(c, o, language=language) if o else None for c, o in zip(captions, objects)]


def sheet_items(per_image: pd.DataFrame, manifest: pd.DataFrame, root: str | Path, count: int) -> list[dict]:
    """The caption sheet's items: the first `count` test images, with the indices of the
    generated caption's words that the grounded metric finds wrong, where it applies."""
    guard = RootGuard(root)
    rows = per_image[per_image.split == "test"]
    if "language" in rows.columns:  # a model of several languages: the sheet shows its default one
        rows = rows[rows.language == rows.language.iloc[0]]
    rows = rows.head(count)
    objects = dict(zip(manifest.image_id, manifest[OBJECTS])) if OBJECTS in manifest.columns else {}
    items = []
    for r in rows.itertuples():
        item = {"image_path": guard.join(r.path), "image_id": r.image_id, "generated": r.caption,
                "references": list(r.references), "score": r.cider}
        truth = load_objects(objects.get(r.image_id))
        if truth and getattr(r, "language", ENGLISH) in LEXICONS:
            item["wrong"] = score_caption(r.caption, truth, language=getattr(r, "language", ENGLISH)).wrong
        items.append(item)
    return items


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")

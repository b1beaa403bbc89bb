"""MS-COCO captions: `annotations/captions_{train,val}2017.json` (2014 files are used
when no 2017 ones exist) with images in `train2017/`, `val2017/` (or `images/train2017/`...).

Split choice: COCO publishes no captions for its test images, so `train2017` -> train
and `val2017` is divided into val and test, each image by its seeded hash (about half
and half; an image's side never depends on the other images). For the split used in
the literature (Karpathy's 5k/5k) use the `karpathy` format instead."""
from __future__ import annotations

from pathlib import Path

from .common import DataConfig, FormatError, Parsed, Record, hash_fraction, pick_prefix, read_json, where

YEARS = ("2017", "2014")


def parse(root: Path, cfg: DataConfig) -> Parsed:
    year = next((y for y in YEARS if any(_annotation_file(root, s, y).is_file() for s in ("train", "val"))), None)
    if year is None:
        expected = ", ".join(str(_annotation_file(root, s, y)) for y in YEARS for s in ("train", "val"))
        raise FormatError(f"coco: no caption annotations found; expected some of {expected}")
    parsed = Parsed([])
    for source_split in ("train", "val"):
        path = _annotation_file(root, source_split, year)
        if path.is_file():
            _parse_file(root, path, f"{source_split}{year}", source_split, cfg.seed, parsed)
    return parsed


def _annotation_file(root: Path, split: str, year: str) -> Path:
    return root / "annotations" / f"captions_{split}{year}.json"


def _parse_file(root: Path, path: Path, folder: str, source_split: str, seed: int, parsed: Parsed) -> None:
    data = read_json(path)
    if not isinstance(data, dict) or not {"images", "annotations"} <= data.keys():
        raise FormatError(f'{path}: expected a COCO captions file with "images" and "annotations"')
    try:
        captions: dict[int, list[str]] = {}
        for ann in data["annotations"]:
            captions.setdefault(ann["image_id"], []).append(ann["caption"])
        names = {image["id"]: image["file_name"] for image in data["images"]}
    except (KeyError, TypeError) as e:
        raise FormatError(f"{path}: malformed COCO entry (missing {e}); expected images[].id/file_name "
                          "and annotations[].image_id/caption") from None
    prefix = pick_prefix(root, [f"{folder}/{name}" for name in names.values()], ("", "images/"))
    for image_id, name in names.items():
        rel = f"{prefix}{folder}/{name}"
        split = "train" if source_split == "train" else _val_or_test(rel, seed)
        # An image without captions is kept here and dropped, with the others, by the builder.
        parsed.records.append(Record(rel, tuple(captions.get(image_id, ())), split, where(path)))


def _val_or_test(image_id: str, seed: int) -> str:
    # Salted differently from the manifest's own split hash so the two never correlate.
    return "val" if hash_fraction(f"coco-val:{image_id}", seed) < 0.5 else "test"

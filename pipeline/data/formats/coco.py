"""MS-COCO-style caption files, in English or another language: `{"images": [{"id",
"file_name"}], "annotations": [{"image_id", "caption"}]}` for the train and the val images.

Files: the first pair found of `annotations/captions_{train,val}2017.json`, the same for 2014,
and STAIR Captions' `stair_captions_v1.2_{train,val}.json` (in the root or `annotations/`);
`data.captions_file` names any other pair as a pattern with `{split}` (for example
`stair_captions_v1.2_{split}_tokenized.json`). Images live in `train2017/`, `val2017/` (or under
`images/`); a COCO 2014 file name (`COCO_val2014_000000000042.jpg`) names its own folder.

Language: STAIR Captions (a file whose name starts with `stair_captions`) is Japanese; any
other file is in data.caption_language (default en), which, when set, also overrides the
STAIR guess.

Split choice: COCO publishes no captions for its test images, so the train file -> train
and the val images are divided into val and test, each image by its seeded hash (about half
and half; an image's side never depends on the other images). For the split used in
the literature (Karpathy's 5k/5k) use the `karpathy` format instead."""
from __future__ import annotations

import re
from pathlib import Path

from .common import DataConfig, FormatError, Parsed, Record, hash_fraction, pick_prefix, read_json, where

SPLITS = ("train", "val")
STAIR = "stair_captions_v1.2_{split}.json"
PATTERNS = ("annotations/captions_{split}2017.json", "annotations/captions_{split}2014.json",
            STAIR, f"annotations/{STAIR}")
STAIR_LANGUAGE = "ja"
_NAME_WITH_FOLDER = re.compile(r"COCO_(?P<folder>(?:train|val)\d{4})_")


def parse(root: Path, cfg: DataConfig) -> Parsed:
    pattern = _pattern(root, cfg.captions_file)
    parsed = Parsed([])
    for source_split in SPLITS:
        path = root / pattern.replace("{split}", source_split)
        if path.is_file():
            # Explicit caption_language wins; None lets the manifest apply it (or en).
            stair = path.name.startswith("stair_captions") and not cfg.caption_language
            _parse_file(root, path, source_split, cfg.seed, STAIR_LANGUAGE if stair else None, parsed)
    return parsed


def _pattern(root: Path, override: str) -> str:
    if override:
        if "{split}" not in override:
            raise FormatError(f"coco: data.captions_file={override!r} must contain {{split}}, e.g. "
                              "stair_captions_v1.2_{split}.json: the train and the val file are both read")
        candidates = [override]
    else:
        candidates = list(PATTERNS)
    for pattern in candidates:
        if any((root / pattern.replace("{split}", s)).is_file() for s in SPLITS):
            return pattern
    expected = ", ".join(str(root / p.replace("{split}", s)) for p in candidates for s in SPLITS)
    raise FormatError(f"coco: no caption annotations found; expected some of {expected} "
                      "(or set data.captions_file to a pattern such as my_captions_{split}.json)")


def _parse_file(root: Path, path: Path, source_split: str, seed: int, language: str | None, parsed: Parsed) -> None:
    data = read_json(path)
    if not isinstance(data, dict) or not {"images", "annotations"} <= data.keys():
        raise FormatError(f'{path}: expected a COCO captions file with "images" and "annotations"')
    try:
        captions: dict[int, list[str]] = {}
        for ann in data["annotations"]:
            captions.setdefault(ann["image_id"], []).append(ann["caption"])
        names = {image["id"]: _in_folder(image["file_name"], source_split) for image in data["images"]}
    except (KeyError, TypeError) as e:
        raise FormatError(f"{path}: malformed COCO entry (missing {e}); expected images[].id/file_name "
                          "and annotations[].image_id/caption") from None
    prefix = pick_prefix(root, list(names.values()), ("", "images/"))
    for image_id, name in names.items():
        rel = prefix + name
        split = "train" if source_split == "train" else _val_or_test(rel, seed)
        # An image without captions is kept here and dropped, with the others, by the builder.
        parsed.records.append(Record(rel, tuple(captions.get(image_id, ())), split, where(path), language))


def _in_folder(file_name: str, source_split: str) -> str:
    return f"{folder_in_name(file_name) or source_split + '2017'}/{file_name}"


def folder_in_name(file_name: str) -> str | None:
    """COCO 2014 names carry their folder (COCO_val2014_...jpg -> val2014); 2017 names do not."""
    match = _NAME_WITH_FOLDER.match(file_name)
    return match["folder"] if match else None


def _val_or_test(image_id: str, seed: int) -> str:
    # Salted differently from the manifest's own split hash so the two never correlate.
    return "val" if hash_fraction(f"coco-val:{image_id}", seed) < 0.5 else "test"

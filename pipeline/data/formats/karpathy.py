"""Karpathy's splits (`dataset_coco.json`, `dataset_flickr8k.json`,
`dataset_flickr30k.json`): `{"images": [{"filepath"?, "filename", "split",
"sentences": [{"raw", "tokens"}]}]}`. `restval` counts as train, as in the papers that
use these files. Captions come from `raw` (our own tokenizer runs later).

Images: COCO entries carry a `filepath` (e.g. `val2014/`) resolved under the root or
under `images/` (a COCO 2014 file name without one, as in other languages' files of this
layout, gets the folder its name gives); Flickr entries have only a file name, looked for in
`images/`, the root itself, or the folders the Flickr formats know.

Karpathy-layout files in another language (COCO-CN's `dataset_mscoco-cn.json`) work the
same with data.karpathy_file and data.caption_language (the file does not name its language)."""
from __future__ import annotations

from pathlib import Path

from . import coco, flickr8k, flickr30k
from .common import DataConfig, FormatError, Parsed, Record, find_file, pick_prefix, read_json, where

FILES = ("dataset_coco.json", "dataset_flickr8k.json", "dataset_flickr30k.json")
SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
PREFIXES_WITH_FILEPATH = ("", "images/")
PREFIXES_NAME_ONLY = ("images/", "", *flickr8k.IMAGE_DIRS, *flickr30k.IMAGE_DIRS)


def parse(root: Path, cfg: DataConfig) -> Parsed:
    path = _find_file(root, cfg.karpathy_file)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise FormatError(f'{path}: expected a Karpathy split file {{"images": [...]}}')
    entries = []
    for index, image in enumerate(data["images"]):
        try:
            filepath = image.get("filepath") or coco.folder_in_name(image["filename"])
            name = f"{filepath}/{image['filename']}" if filepath else image["filename"]
            split = SPLITS.get(image["split"])
            captions = tuple(sentence["raw"] for sentence in image["sentences"])
        except (KeyError, TypeError) as e:
            raise FormatError(
                f"{path}: images[{index}] lacks {e}; expected filename, split, sentences[].raw"
            ) from None
        if split is None:
            raise FormatError(
                f"{path}: images[{index}] has split {image['split']!r}; expected one of {', '.join(SPLITS)}"
            )
        entries.append((name, split, captions, bool(filepath)))
    # Entries with and without a filepath resolve against different folder lists.
    prefixes = {
        has_filepath: pick_prefix(
            root,
            [name for name, _, _, fp in entries if fp == has_filepath],
            PREFIXES_WITH_FILEPATH if has_filepath else PREFIXES_NAME_ONLY,
        )
        for has_filepath in (True, False)
    }
    records = [
        Record(prefixes[fp] + name, captions, split, f"{where(path)} images[{index}]")
        for index, (name, split, captions, fp) in enumerate(entries)
    ]
    return Parsed(records)


def _find_file(root: Path, override: str) -> Path:
    if override:
        return find_file(root, override, FILES, "karpathy")
    found = [root / name for name in FILES if (root / name).is_file()]
    if len(found) != 1:
        what = "none" if not found else "several"
        raise FormatError(
            f"karpathy: {what} of {', '.join(FILES)} found in {root}; set data.karpathy_file to the one to use"
        )
    return found[0]

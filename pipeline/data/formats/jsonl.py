"""Generic JSON Lines: one object per line,
`{"image": "images/a.png", "captions": ["...", ...], "split": "train" | null, ...}`
(or a single `"caption": "..."`); other keys are ignored, except an optional `"objects"`
list (the scene's ground truth: shape, colour, size, x, y per object), which the manifest
carries so that evaluate can check what captions claim. Lines for the same image are
merged by the manifest builder. The embedded `scenes` data set is this format with its
default file name."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from .common import DataConfig, FormatError, Parsed, Record, find_file, read_lines, where

logger = logging.getLogger(__name__)
OBJECT_KEYS = {"shape", "colour", "size", "x", "y"}  # what the grounded metric reads


@dataclass(frozen=True)
class SceneRecord(Record):
    """A record with the image's ground-truth objects as JSON text (None: the line has none)."""

    objects: str | None = None


def parse(root: Path, cfg: DataConfig, default_file: str = "captions.jsonl") -> Parsed:
    path = find_file(root, cfg.captions_file, [default_file], "jsonl")
    records = []
    for number, text in read_lines(path):
        try:
            item = json.loads(text)
        except json.JSONDecodeError as e:
            raise FormatError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        records.append(_record(item, f"{path}:{number}", where(path, number)))
    return Parsed(records)


def _record(item: object, location: str, short: str) -> Record:
    if not isinstance(item, dict) or not isinstance(item.get("image"), str):
        raise FormatError(f'{location}: expected an object with a string "image" key')
    if "captions" in item:
        captions = item["captions"]
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise FormatError(f'{location}: "captions" must be a list of strings')
    elif isinstance(item.get("caption"), str):
        captions = [item["caption"]]
    else:
        raise FormatError(f'{location}: expected "captions" (list of strings) or "caption" (string)')
    split = item.get("split")
    if split is not None and not isinstance(split, str):
        raise FormatError(f'{location}: "split" must be a string or null, got {split!r}')
    return SceneRecord(item["image"], tuple(captions), split or None, short, _objects(item.get("objects"), location))


def _objects(objects: object, location: str) -> str | None:
    """The objects as JSON text when they are complete enough to check captions against;
    anything else stays an ignored key, as it was before the grounded metric used them."""
    if not objects:
        return None
    if isinstance(objects, list) and all(isinstance(o, dict) and OBJECT_KEYS <= set(o) for o in objects):
        return json.dumps(objects, sort_keys=True)
    logger.warning("%s: ignoring \"objects\": each needs %s", location, ", ".join(sorted(OBJECT_KEYS)))
    return None

"""Generic JSON Lines: one object per line,
`{"image": "images/a.png", "captions": ["...", ...], "split": "train" | null, ...}`
(or a single `"caption": "..."`); other keys are ignored. Lines for the same image
are merged by the manifest builder. The embedded `scenes` data set is this format
with its default file name."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from .common import FormatError, Parsed, Record, find_file, read_lines, where

if TYPE_CHECKING:
    from pipeline.manifest import DataConfig


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
    return Record(item["image"], tuple(captions), split or None, short)

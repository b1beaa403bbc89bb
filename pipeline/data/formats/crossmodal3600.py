"""Crossmodal-3600 (XM3600, google.github.io/crossmodal-3600): 3,600 images with captions in 36
languages. `captions.jsonl` has one object per image:
`{"image/key": "000411001ff7dd4f", "image/locale": "ar", "de": {"caption": [...],
"caption/tokenized": [...], "caption/tokenized/lowercase": [...]}, "en": {...}, ...}`;
the image is `images/<key>.jpg` (or `<key>.jpg` in the root).

Every key without a '/' is a language code whose `"caption"` list is read (the raw text;
our tokenizer runs later); keys with a '/' (`image/key`, `image/locale`) describe the image.
XM3600 is an evaluation set and ships no split, so every image gets a hashed one
(data.val_fraction / data.test_fraction)."""
from __future__ import annotations

from pathlib import Path

from .common import (DataConfig, FormatError, Parsed, Record, find_file, normalize_language, pick_prefix, read_jsonl,
                     where)

CAPTIONS_FILE = "captions.jsonl"
IMAGE_DIRS = ("images/", "")
KEY = "image/key"


def parse(root: Path, cfg: DataConfig) -> Parsed:
    path = find_file(root, cfg.captions_file, [CAPTIONS_FILE], "crossmodal3600")
    entries = []  # (image file name, captions, language, where)
    for number, item in read_jsonl(path):
        location = f"{path}:{number}"
        if not isinstance(item, dict) or not isinstance(item.get(KEY), str) or not item[KEY].strip():
            raise FormatError(f'{location}: expected an object with a string "{KEY}"')
        name, at = f"{item[KEY].strip()}.jpg", where(path, number)
        languages = [key for key in item if "/" not in key]
        for key in languages:
            language = normalize_language(key, f"{location}: key (not image metadata, which has a '/')")
            captions = item[key].get("caption") if isinstance(item[key], dict) else None
            if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
                raise FormatError(f'{location}: "{key}" must be an object whose "caption" is a list of strings')
            entries.append((name, tuple(captions), language, at))
        if not languages:  # reported by the manifest as an image without captions
            entries.append((name, (), None, at))
    prefix = pick_prefix(root, [name for name, *_ in entries], IMAGE_DIRS)
    return Parsed([Record(prefix + name, captions, None, at, language) for name, captions, language, at in entries])

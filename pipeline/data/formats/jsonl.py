"""Generic JSON Lines: one object per line,
`{"image": "images/a.png", "captions": ["...", ...], "split": "train" | null, ...}`
(or a single `"caption": "..."`); other keys are ignored, except an optional `"objects"`
list (the scene's ground truth: shape, colour, size, x, y per object), which the manifest
carries so that evaluate can check what captions claim. Lines for the same image are
merged by the manifest builder. The embedded `scenes` data set is this format with its
default file name.

Languages: `"captions"`/`"caption"` are in `"language"` (a code, default "en"), and
`"captions_by_language": {"de": [...], "ja": [...]}` adds captions in other languages; a
line needs captions in at least one of these keys. The scenes write English under
"captions" and every other language of `scenes.languages` under "captions_by_language"."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from .common import (DEFAULT_LANGUAGE, DataConfig, FormatError, Parsed, Record, check_language_code, find_file,
                     read_jsonl, where)

logger = logging.getLogger(__name__)
OBJECT_KEYS = {"shape", "colour", "size", "x", "y"}  # what the grounded metric reads


@dataclass(frozen=True)
class SceneRecord(Record):
    """A record with the image's ground-truth objects as JSON text (None: the line has none)."""

    objects: str | None = None


def parse(root: Path, cfg: DataConfig, default_file: str = "captions.jsonl") -> Parsed:
    path = find_file(root, cfg.captions_file, [default_file], "jsonl")
    records = []
    for number, item in read_jsonl(path):
        records.extend(_records(item, f"{path}:{number}", where(path, number)))
    return Parsed(records)


def _records(item: object, location: str, short: str) -> list[Record]:
    """One record per language the line has captions in (the manifest merges them)."""
    if not isinstance(item, dict) or not isinstance(item.get("image"), str):
        raise FormatError(f'{location}: expected an object with a string "image" key')
    by_language = _by_language(item, location)
    split = item.get("split")
    if split is not None and not isinstance(split, str):
        raise FormatError(f'{location}: "split" must be a string or null, got {split!r}')
    objects = _objects(item.get("objects"), location)
    return [SceneRecord(item["image"], tuple(captions), split or None, short, language=language, objects=objects)
            for language, captions in by_language.items()]


def _by_language(item: dict, location: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if "captions" in item or "caption" in item:
        language = item.get("language", DEFAULT_LANGUAGE)
        check_language_code(language, f'{location}: "language"')
        if "captions" in item:
            out[language] = _strings(item["captions"], '"captions"', location)
        elif isinstance(item.get("caption"), str):
            out[language] = [item["caption"]]
        else:
            raise FormatError(f'{location}: "caption" must be a string')
    more = item.get("captions_by_language", {})
    if not isinstance(more, dict):
        raise FormatError(f'{location}: "captions_by_language" must map language codes to lists of captions')
    for language, captions in more.items():
        check_language_code(language, f'{location}: "captions_by_language"')
        out[language] = [*out.get(language, []), *_strings(captions, f'"captions_by_language"."{language}"', location)]
    if not out:
        raise FormatError(f'{location}: expected "captions" (list of strings), "caption" (string) '
                          'or "captions_by_language" (language code -> list of strings)')
    return out


def _strings(captions: object, key: str, location: str) -> list[str]:
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise FormatError(f"{location}: {key} must be a list of strings")
    return captions


def _objects(objects: object, location: str) -> str | None:
    """The objects as JSON text when they are complete enough to check captions against;
    anything else stays an ignored key, as it was before the grounded metric used them."""
    if not objects:
        return None
    if isinstance(objects, list) and all(isinstance(o, dict) and OBJECT_KEYS <= set(o) for o in objects):
        return json.dumps(objects, sort_keys=True)
    logger.warning("%s: ignoring \"objects\": each needs %s", location, ", ".join(sorted(OBJECT_KEYS)))
    return None

"""Data-source formats. Each parser reads one layout into `Record`s; the manifest
builder (`pipeline.data.manifest`) does the rest. Adding a format = one module + one line in
FORMATS."""
from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from . import coco, crossmodal3600, csvfile, flickr8k, flickr30k, jsonl, karpathy, multi30k
from .common import DataConfig, FormatError, Parsed, Record, hash_fraction

Parser = Callable[[Path, DataConfig], Parsed]

FORMATS: dict[str, Parser] = {
    "scenes": functools.partial(jsonl.parse, default_file="captions.jsonl"),  # the embedded data set
    "jsonl": jsonl.parse,
    "csv": csvfile.parse,
    "flickr8k": flickr8k.parse,
    "flickr30k": flickr30k.parse,
    "coco": coco.parse,
    "karpathy": karpathy.parse,
    "multi30k": multi30k.parse,
    "crossmodal3600": crossmodal3600.parse,
}

__all__ = ["FORMATS", "DataConfig", "FormatError", "Parsed", "Parser", "Record", "hash_fraction"]

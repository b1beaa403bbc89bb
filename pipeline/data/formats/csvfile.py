"""Generic CSV: a header line naming `image,caption` and optionally `split`, one caption
per row (quote captions that contain commas). Rows for the same image are merged by the
manifest builder; a missing or empty split is assigned deterministically."""
from __future__ import annotations

from pathlib import Path

from .common import DataConfig, Parsed, Record, find_file, read_csv, where


def parse(root: Path, cfg: DataConfig, default_file: str = "captions.csv") -> Parsed:
    path = find_file(root, cfg.captions_file, [default_file], "csv")
    records = [
        Record(row["image"], (row["caption"],), row.get("split") or None, where(path, line))
        for line, row in read_csv(path, required=("image", "caption"))
    ]
    return Parsed(records)

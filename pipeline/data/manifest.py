"""The manifest: the one table every stage after `prepare` reads.

Contract (checked by `validate_manifest`, one row per image):
    image_id  str        unique; the image's path relative to the data root
    path      str        POSIX path relative to the data root, never escaping it
    split     str        one of SPLITS
    captions  list[str]  >= 1 caption, whitespace-normalised, non-empty, no duplicates
    objects   str        optional column, only when the source has it (the scenes' ground-truth
                         objects as JSON, for evaluate's grounded metric); null for other images
The data root is stored in the Parquet schema metadata under b"data_root".

`build_manifest` runs a format parser (pipeline.data.formats) and then applies the same rules
to every source: paths are normalised and confined to the root, rows of one image are
merged, an image that the source puts in two splits is an error, images without a split
get a deterministic one from a seeded hash of their id, and images that are missing on
disk or have no caption are dropped and reported rather than crashing the run.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.formats import FORMATS, DataConfig, Record, hash_fraction

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "novel")
COLUMNS = ("image_id", "path", "split", "captions")
OBJECTS = "objects"
DATA_ROOT_KEY = b"data_root"
# Names real sources use for our splits.
SPLIT_ALIASES = {"dev": "val", "valid": "val", "validation": "val", "restval": "train"}
EXAMPLES_IN_REPORT = 5
MISSING_ON_DISK = "missing on disk"
NO_CAPTIONS = "no non-empty caption"

SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("path", pa.string()),
        ("split", pa.string()),
        ("captions", pa.list_(pa.string())),
    ]
)


class ManifestError(ValueError):
    """The source or manifest breaks the contract; the message says what to fix."""


class UnsafePathError(ManifestError):
    """A path would leave the data root."""


def normalize_relpath(path: str, where: str = "") -> str:
    """Clean POSIX form of a root-relative path ("./a//b.png" -> "a/b.png"; backslashes
    from Windows-made files become slashes). Absolute paths and any `..` are rejected
    outright: a caption file has no business pointing outside its data set."""
    prefix = f"{where}: " if where else ""
    text = str(path).strip().replace("\\", "/")
    if not text:
        raise UnsafePathError(f"{prefix}empty image path")
    if text.startswith("/") or (text[1:2] == ":" and text[0].isalpha()):
        raise UnsafePathError(f"{prefix}image path {path!r} is absolute; paths must be relative to the data root")
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if ".." in parts or not parts:
        raise UnsafePathError(f"{prefix}image path {path!r} escapes the data root ('..' is not allowed)")
    return "/".join(parts)


class RootGuard:
    """Joins root-relative paths onto a data root and proves each result stays inside it,
    symlinks included. Folders are resolved once and cached, so guarding every image of
    a 100k-image data set costs about one lstat per image."""

    def __init__(self, root: str | Path):
        self.root = os.path.realpath(root)
        self._folders: dict[str, str] = {}

    def join(self, rel: str | Path, where: str = "") -> Path:
        rel = normalize_relpath(str(rel), where)
        folder, _, name = rel.rpartition("/")
        real_folder = self._folders.get(folder)
        if real_folder is None:
            real_folder = self._inside(os.path.realpath(os.path.join(self.root, folder)), rel, where)
            self._folders[folder] = real_folder
        path = os.path.join(real_folder, name)
        if os.path.islink(path):
            path = self._inside(os.path.realpath(path), rel, where)
        return Path(path)

    def _inside(self, real: str, rel: str, where: str) -> str:
        if real != self.root and not real.startswith(self.root.rstrip(os.sep) + os.sep):
            prefix = f"{where}: " if where else ""
            raise UnsafePathError(
                f"{prefix}image path {rel!r} resolves to {real}, outside the data root {self.root} (symlink?)"
            )
        return real


def safe_join(root: str | Path, rel: str | Path, where: str = "") -> Path:
    """root/rel, resolved, guaranteed inside root: rejects absolute paths, `..` and
    symlinks that lead outside root. Use it for every path read from a data file
    (RootGuard(root).join does the same, faster, for many paths under one root)."""
    return RootGuard(root).join(rel, where)


def build_manifest(cfg: DataConfig) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Parse the source named by cfg.format under cfg.root into (manifest, report)."""
    if cfg.format not in FORMATS:
        raise ValueError(f"unknown data format {cfg.format!r}; known formats: {', '.join(sorted(FORMATS))}")
    _check_fractions(cfg)
    root = Path(cfg.root)
    if not root.is_dir():
        raise ManifestError(f"data root {root} is not a directory; set data.root to the folder holding the data set")
    parsed = FORMATS[cfg.format](root, cfg)
    images = _merge(parsed.records)
    dropped: dict[str, list[str]] = {reason: list(names) for reason, names in parsed.dropped.items()}

    guard = RootGuard(root)
    rows, hashed = [], 0
    for image_id, image in images.items():
        path = guard.join(image_id, image.split_where)
        if not image.captions:
            dropped.setdefault(NO_CAPTIONS, []).append(image_id)
        elif cfg.check_files and not path.is_file():
            dropped.setdefault(MISSING_ON_DISK, []).append(image_id)
        else:
            split = image.split
            if split is None:
                split, hashed = _hashed_split(image_id, cfg), hashed + 1
            rows.append((image_id, image_id, split, image.captions, image.objects))
    for reason, names in dropped.items():
        logger.warning("dropped %d image(s): %s (e.g. %s)", len(names), reason, ", ".join(names[:EXAMPLES_IN_REPORT]))
    if not rows:
        raise ManifestError(
            f"no usable images in {root} (format {cfg.format!r}): "
            + "; ".join(f"{len(names)} {reason}" for reason, names in dropped.items())
            + ". Check data.root and data.format."
        )

    order = {split: i for i, split in enumerate(SPLITS)}
    rows.sort(key=lambda row: (order[row[2]], row[0]))
    df = pd.DataFrame(rows, columns=[*COLUMNS, OBJECTS])
    if df[OBJECTS].isna().all():
        df = df.drop(columns=OBJECTS)
    validate_manifest(df)
    return df, _report(cfg, df, dropped, hashed)


def _check_fractions(cfg: DataConfig) -> None:
    fractions = (cfg.val_fraction, cfg.test_fraction)
    if min(fractions) < 0 or sum(fractions) >= 1:
        raise ManifestError(
            f"data.val_fraction={cfg.val_fraction} and data.test_fraction={cfg.test_fraction} must be "
            ">= 0 and sum to less than 1 (the rest is train)"
        )


@dataclass
class _Image:
    split: str | None
    split_where: str  # the line that set the split (or first mentioned the image)
    captions: list[str]
    known: set[str]
    objects: str | None = None


def _merge(records: Iterable[Record]) -> dict[str, _Image]:
    """image_id -> split and captions (first-seen order, whitespace-normalised, no
    duplicates) gathered from every record that mentions the image."""
    images: dict[str, _Image] = {}
    for record in records:
        image_id = normalize_relpath(record.path, record.where)
        split = _normalize_split(record.split, record.where)
        image = images.setdefault(image_id, _Image(split, record.where, [], set()))
        if split and image.split and split != image.split:
            raise ManifestError(
                f"image {image_id} is in two splits: '{image.split}' ({image.split_where}) and '{split}' "
                f"({record.where}); each image must be in exactly one split, fix the source"
            )
        if split and not image.split:
            image.split, image.split_where = split, record.where
        image.objects = image.objects or getattr(record, "objects", None)  # only jsonl records have them
        for caption in record.captions:
            if not isinstance(caption, str):
                raise ManifestError(f"{record.where}: caption {caption!r} is not a string")
            caption = " ".join(caption.split())
            if caption and caption not in image.known:
                image.known.add(caption)
                image.captions.append(caption)
    return images


def _normalize_split(split: str | None, where: str) -> str | None:
    if split is None or not split.strip():
        return None
    name = split.strip().lower()
    name = SPLIT_ALIASES.get(name, name)
    if name not in SPLITS:
        raise ManifestError(f"{where}: unknown split {split!r}; expected one of {', '.join(SPLITS)} (or empty)")
    return name


def _hashed_split(image_id: str, cfg: DataConfig) -> str:
    u = hash_fraction(image_id, cfg.seed)
    if u < cfg.val_fraction:
        return "val"
    if u < cfg.val_fraction + cfg.test_fraction:
        return "test"
    return "train"


def _report(cfg: DataConfig, df: pd.DataFrame, dropped: dict[str, list[str]], hashed: int) -> dict[str, Any]:
    n_captions = df["captions"].map(len)
    in_split = {split: df["split"] == split for split in SPLITS}
    return {
        "format": cfg.format,
        "root": str(cfg.root),
        "images": len(df),
        "captions": int(n_captions.sum()),
        "splits": {
            split: {"images": int(mask.sum()), "captions": int(n_captions[mask].sum())}
            for split, mask in in_split.items()
            if mask.any()
        },
        "hashed_splits": hashed,  # images whose split came from the seeded hash, not the source
        "dropped": {
            reason: {"count": len(names), "examples": names[:EXAMPLES_IN_REPORT]} for reason, names in dropped.items()
        },
    }


def validate_manifest(df: pd.DataFrame) -> None:
    """Raise ManifestError listing every way df breaks the contract (see module docstring)."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"manifest lacks column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    if df.empty:
        raise ManifestError("manifest has no rows")
    # Plain lists: iterating Arrow-backed pandas columns element by element is ~10x slower.
    ids, paths, splits, captions = (df[c].tolist() for c in COLUMNS)
    problems = []
    if not all(isinstance(v, str) and v for v in ids):
        problems.append("image_id must be non-empty strings")
    elif len(set(ids)) < len(ids):
        duplicated = df["image_id"][df["image_id"].duplicated()].head(5).tolist()
        problems.append(f"duplicate image_id(s): {', '.join(duplicated)}")
    bad_path = next((p for p in paths if not _is_clean_relpath(p)), None)
    if bad_path is not None:
        problems.append(f"path {bad_path!r} is not a clean relative POSIX path inside the data root")
    bad_splits = sorted(set(map(str, splits)) - set(SPLITS))
    if bad_splits:
        problems.append(f"unknown split(s) {', '.join(bad_splits)}; expected {', '.join(SPLITS)}")
    bad_captions = next((i for i, c in zip(ids, captions) if not _is_caption_list(c)), None)
    if bad_captions is not None:
        problems.append(f"image {bad_captions!r}: captions must be a non-empty list of stripped, non-empty strings")
    if problems:
        raise ManifestError("invalid manifest: " + "; ".join(problems))


def _is_clean_relpath(path: object) -> bool:
    try:
        return isinstance(path, str) and normalize_relpath(path) == path
    except UnsafePathError:
        return False


def _is_caption_list(captions: object) -> bool:
    return (
        not isinstance(captions, str)
        and hasattr(captions, "__len__")
        and len(captions) > 0
        and all(isinstance(c, str) and c and c == c.strip() for c in captions)
    )


def write_manifest(df: pd.DataFrame, path: str | Path, data_root: str | Path) -> None:
    """Validate and write atomically (tmp file + rename), so a crash never leaves a
    half-written manifest for DVC to cache."""
    validate_manifest(df)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {c: df[c].tolist() for c in COLUMNS}
    columns["captions"] = [list(c) for c in columns["captions"]]
    schema = SCHEMA
    if OBJECTS in df.columns:
        columns[OBJECTS] = [v if isinstance(v, str) else None for v in df[OBJECTS]]
        schema = schema.append(pa.field(OBJECTS, pa.string()))
    table = pa.Table.from_pydict(columns, schema=schema.with_metadata({DATA_ROOT_KEY: str(data_root).encode()}))
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_manifest(path: str | Path) -> tuple[pd.DataFrame, str]:
    """(manifest with captions as Python lists, data root it was built from)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist; run the prepare stage (dvc repro prepare)")
    table = pq.read_table(path)
    data_root = (table.schema.metadata or {}).get(DATA_ROOT_KEY)
    if data_root is None:
        raise ManifestError(f"{path} has no data_root metadata; rebuild it with write_manifest")
    df = table.to_pandas()
    df["captions"] = df["captions"].map(list)
    validate_manifest(df)
    return df, data_root.decode()

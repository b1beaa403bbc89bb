"""The manifest: the one table every stage after `prepare` reads.

Contract (checked by `validate_manifest`, one row per image):
    image_id  str        unique; the image's path relative to the data root
    path      str        POSIX path relative to the data root, never escaping it
    split     str        one of SPLITS
    captions  list[str]  >= 1 caption, whitespace-normalised, non-empty, no duplicates (in a language)
    language  list[str]  the language code of each caption, parallel to `captions`
                         (data.caption_language, default "en", for sources that do not say);
                         written by every build, added as all "en" when an older manifest
                         without it is read
    objects   str        optional column, only when the source has it (the scenes' ground-truth
                         objects as JSON, for evaluate's grounded metric); null for other images
The data root is stored in the Parquet schema metadata under b"data_root".

`build_manifest` runs a format parser (pipeline.data.formats) and then applies the same rules
to every source: paths are normalised and confined to the root, rows of one image are
merged, an image that the source puts in two splits is an error, images without a split
get a deterministic one from a seeded hash of their id, and images that are missing on
disk or have no caption are dropped and reported rather than crashing the run.
`data.languages` keeps only the captions in those languages (an image left without any
is dropped and reported).

The row stays one image, with its captions of every language in one list, because the
features, the splits and the metrics' references are per image: one row per (image,
language) would repeat image ids that every later stage keys on. A consumer that wants one
language filters the captions by `language`; training prepends each caption's language.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.formats import FORMATS, DataConfig, Record, hash_fraction
from pipeline.data.formats.common import DEFAULT_LANGUAGE, normalize_language
from pipeline.data.languages import LANGUAGE, check_codes, default_column, is_language_list, keep_languages
from pipeline.data.paths import (  # noqa: F401 -- re-exported: the manifest's public path API
    ManifestError,
    RootGuard,
    UnsafePathError,
    is_clean_relpath,
    normalize_relpath,
    safe_join,
)

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
NOT_IN_LANGUAGES = "no caption in data.languages"

SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("path", pa.string()),
        ("split", pa.string()),
        ("captions", pa.list_(pa.string())),
        (LANGUAGE, pa.list_(pa.string())),
    ]
)


def build_manifest(cfg: DataConfig) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Parse the source named by cfg.format under cfg.root into (manifest, report)."""
    if cfg.format not in FORMATS:
        raise ValueError(f"unknown data format {cfg.format!r}; known formats: {', '.join(sorted(FORMATS))}")
    _check_fractions(cfg)
    check_codes(cfg.languages)
    default_language = (normalize_language(cfg.caption_language, "data.caption_language")
                        if cfg.caption_language else DEFAULT_LANGUAGE)
    root = Path(cfg.root)
    if not root.is_dir():
        raise ManifestError(f"data root {root} is not a directory; set data.root to the folder holding the data set")
    parsed = FORMATS[cfg.format](root, cfg)
    images = _merge(parsed.records, default_language)
    dropped: dict[str, list[str]] = {reason: list(names) for reason, names in parsed.dropped.items()}
    if cfg.languages and (emptied := keep_languages(images, cfg.languages, f"{root} (format {cfg.format!r})")):
        dropped[NOT_IN_LANGUAGES] = emptied

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
            rows.append((image_id, image_id, split, image.captions, image.languages, image.objects))
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
    df = pd.DataFrame(rows, columns=[*COLUMNS, LANGUAGE, OBJECTS])
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
    known: set[tuple[str, str]]  # (language, caption)
    languages: list[str] = field(default_factory=list)  # of each caption
    objects: str | None = None


def _merge(records: Iterable[Record], default_language: str = DEFAULT_LANGUAGE) -> dict[str, _Image]:
    """image_id -> split and captions with their languages (first-seen order,
    whitespace-normalised, no duplicates within a language) gathered from every record
    that mentions the image; a record that names no language is in `default_language`."""
    images: dict[str, _Image] = {}
    for record in records:
        language = record.language or default_language
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
            if caption and (language, caption) not in image.known:
                image.known.add((language, caption))
                image.captions.append(caption)
                image.languages.append(language)
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
        "languages": dict(sorted(Counter(code for codes in df[LANGUAGE] for code in codes).items())),
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
    bad_path = next((p for p in paths if not is_clean_relpath(p)), None)
    if bad_path is not None:
        problems.append(f"path {bad_path!r} is not a clean relative POSIX path inside the data root")
    bad_splits = sorted(set(map(str, splits)) - set(SPLITS))
    if bad_splits:
        problems.append(f"unknown split(s) {', '.join(bad_splits)}; expected {', '.join(SPLITS)}")
    bad_captions = next((i for i, c in zip(ids, captions) if not _is_caption_list(c)), None)
    if bad_captions is not None:
        problems.append(f"image {bad_captions!r}: captions must be a non-empty list of stripped, non-empty strings")
    elif LANGUAGE in df.columns:
        bad_languages = next((i for i, c, codes in zip(ids, captions, df[LANGUAGE].tolist())
                              if not is_language_list(codes, len(c))), None)
        if bad_languages is not None:
            problems.append(f"image {bad_languages!r}: language must hold one language code per caption")
    if problems:
        raise ManifestError("invalid manifest: " + "; ".join(problems))


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
    columns[LANGUAGE] = [list(c) for c in df[LANGUAGE]] if LANGUAGE in df.columns else default_column(df["captions"])
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
    """(manifest with captions and their languages as Python lists, data root it was built from)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist; run the prepare stage (dvc repro prepare)")
    table = pq.read_table(path)
    data_root = (table.schema.metadata or {}).get(DATA_ROOT_KEY)
    if data_root is None:
        raise ManifestError(f"{path} has no data_root metadata; rebuild it with write_manifest")
    df = table.to_pandas()
    df["captions"] = df["captions"].map(list)
    if LANGUAGE in df.columns:
        df[LANGUAGE] = df[LANGUAGE].map(list)
    else:  # written before captions had languages: all English
        df.insert(df.columns.get_loc("captions") + 1, LANGUAGE, default_column(df["captions"]))
    validate_manifest(df)
    return df, data_root.decode()

"""What every format parser shares: the config it reads (DataConfig), the record it emits and
tolerant readers for the text files real datasets ship (UTF-8 BOM, CRLF, blank lines, quoted commas).

Parsers only *read*; merging captions, assigning missing splits, checking paths and
files is done once, centrally, in `pipeline.data.manifest`, so every format gets the same
rules. A parser therefore never needs to be careful about anything but its own syntax.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any


class FormatError(ValueError):
    """An annotation file is malformed; the message names the file and line."""


@dataclass
class DataConfig:
    """params.yaml section `data`: which source to read and how to split it. Lives here, not in
    the manifest module, because every parser takes it: the manifest imports the formats, never
    the other way round."""

    format: str = "scenes"  # a key of pipeline.data.formats.FORMATS
    root: str = "data/scenes"
    val_fraction: float = 0.1  # of images without a split in the source
    test_fraction: float = 0.1
    seed: int = 0  # salts the split hash; changing it reshuffles train/val/test
    check_files: bool = True  # drop (and report) listed images that are not on disk
    captions_file: str = ""  # overrides the format's default caption file name
    karpathy_file: str = ""  # which dataset_*.json, when the root holds several
    languages: list[str] = field(default_factory=list)  # keep captions in these languages only; [] = all
    caption_language: str = ""  # language of captions whose files name none; "" = en (STAIR Captions: ja)
    multi30k_task: int = 2  # Multi30k: 1 = one translation per language per image, 2 = five descriptions


# A caption's language when neither its source nor data.caption_language says.
DEFAULT_LANGUAGE = "en"
# ISO 639 code, optionally with a region or script subtag ("en", "pt-br", "zh-hant").
LANGUAGE_CODE = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]{2,8})*")


def check_language_code(code: object, where: str) -> None:
    if not isinstance(code, str) or not LANGUAGE_CODE.fullmatch(code):
        raise FormatError(f"{where}: language {code!r} is not a lower-case language code such as 'en' or 'de'")


def normalize_language(code: object, where: str) -> str:
    """A language code as a data set spells it, in the manifest's form: lower case, subtags
    joined by '-' ("DE" -> "de", "zh_TW" -> "zh-tw"). Region and script subtags are kept, so
    zh-tw and zh stay two languages (they are written differently); data.languages names them
    exactly."""
    text = code.strip().lower().replace("_", "-") if isinstance(code, str) else code
    if not isinstance(text, str) or not LANGUAGE_CODE.fullmatch(text):
        raise FormatError(f"{where}: {code!r} is not a language code such as 'en', 'de' or 'zh-tw'")
    return text


@dataclass(frozen=True)
class Record:
    """One image mention in a source: its path relative to the data root as the source
    spells it, the caption(s) on that line, their language, and the source's split (None =
    assign one)."""

    path: str
    captions: tuple[str, ...]
    split: str | None
    where: str  # "file:line" so errors can point at the offending line
    language: str | None = None  # of every caption in `captions`; None: data.caption_language (or en)


@dataclass
class Parsed:
    records: list[Record]
    # Images the parser itself had to leave out, by reason (e.g. not in any split file).
    dropped: dict[str, list[str]] = field(default_factory=dict)


def hash_fraction(image_id: str, seed: int) -> float:
    """A stable pseudo-random number in [0, 1) per image: the same image always lands in
    the same split for a given seed, independent of file order or of other images."""
    digest = hashlib.sha1(f"{seed}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def where(path: Path, line: int | None = None) -> str:
    return f"{path.name}:{line}" if line is not None else path.name


def open_text(path: Path) -> IO[str]:
    """A UTF-8 text file, gzip-compressed when its name ends in .gz (Multi30k ships its text
    that way); BOM and CRLF tolerated."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline=None)
    return open(path, encoding="utf-8-sig", newline=None)


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped text) for every non-blank line."""
    with open_text(path) as f:
        for number, line in enumerate(f, start=1):
            text = line.strip()
            if text:
                yield number, text


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, decoded value) for every non-blank line of a JSON Lines file."""
    for number, text in read_lines(path):
        try:
            item = json.loads(text)
        except json.JSONDecodeError as e:
            raise FormatError(f"{path}:{number}: not valid JSON ({e.msg})") from None
        yield number, item


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None


def read_csv(path: Path, required: Sequence[str], delimiter: str = ",") -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a CSV with a header line, keyed by lower-cased, stripped column names.
    Quoted fields (captions containing commas) are handled by the csv module."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, skipinitialspace=True)
        header = next((row for row in reader if any(cell.strip() for cell in row)), None)
        columns = [cell.strip().lower() for cell in header or []]
        missing = [name for name in required if name not in columns]
        if missing:
            raise FormatError(
                f"{path}: the first line must be a header naming the columns "
                f"{', '.join(required)} (found {', '.join(columns) or 'nothing'})"
            )
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(columns):
                raise FormatError(
                    f"{path}:{reader.line_num}: expected {len(columns)} fields "
                    f"({', '.join(columns)}), got {len(row)}; quote captions that contain '{delimiter}'"
                )
            yield reader.line_num, {name: cell.strip() for name, cell in zip(columns, row)}


# "1000268201_693b08cb0b.jpg#0<TAB>A child in a pink dress ..." (Flickr8k/30k token files).
_TOKEN_LINE = re.compile(r"^(?P<image>[^\t#]+)#\d+\s+(?P<caption>.*)$")


def read_token_file(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line, image file name, caption) from a Flickr `image#N<TAB>caption` file."""
    for number, text in read_lines(path):
        match = _TOKEN_LINE.match(text)
        if match is None:
            raise FormatError(f"{path}:{number}: expected 'image.jpg#N<TAB>caption', got {text[:80]!r}")
        yield number, match["image"].strip(), match["caption"]


def find_file(root: Path, override: str, candidates: Sequence[str], what: str) -> Path:
    """The configured file if given, else the first candidate that exists under root."""
    if override:
        path = root / override
        if not path.is_file():
            raise FormatError(f"{what}: configured file {path} does not exist")
        return path
    for name in candidates:
        if (root / name).is_file():
            return root / name
    raise FormatError(
        f"{what}: none of {', '.join(candidates)} found in {root}; "
        f"point data.root at the dataset folder or set data.captions_file"
    )


def pick_prefix(root: Path, names: Sequence[str], prefixes: Sequence[str], sample: int = 20) -> str:
    """The image folder (as a path prefix) where the listed images actually are: the first
    prefix under which any of the first `sample` names exists. Datasets are unpacked under
    different folder names (Images/, Flicker8k_Dataset/, ...); checking files rather than
    folders copes with empty leftovers. Falls back to the first prefix, whose missing
    images are then reported by the manifest builder."""
    distinct = list(dict.fromkeys(names))[:sample]  # caption files repeat each name ~5 times
    for prefix in prefixes:
        if any((root / f"{prefix}{name}").is_file() for name in distinct):
            return prefix
    return prefixes[0]


def read_flickr_captions(path: Path) -> list[tuple[int, str, str]]:
    """(line, image file name, caption) from any of the Flickr caption layouts in the
    wild: the authors' `image#N<TAB>caption` token file, Kaggle's `image,caption` CSV,
    or Kaggle's Flickr30k `image_name| comment_number| comment` file."""
    with open(path, encoding="utf-8-sig") as f:
        header = f.readline().strip().lower().replace(" ", "")
    if header.startswith("image,caption"):
        return [(line, row["image"], row["caption"]) for line, row in read_csv(path, ("image", "caption"))]
    if header.startswith("image_name|"):
        return list(_read_pipe_file(path))
    return list(read_token_file(path))


# Kaggle's results.csv has a row whose second separator is missing: "x.jpg| 4 A dog ...".
_NUMBER_THEN_CAPTION = re.compile(r"^\s*\d+\s+(?P<caption>.+)$")


def _read_pipe_file(path: Path) -> Iterator[tuple[int, str, str]]:
    lines = read_lines(path)
    next(lines)  # header
    for number, text in lines:
        fields = text.split("|", 2)
        if len(fields) == 3:
            name, caption = fields[0], fields[2]
        elif len(fields) == 2 and (match := _NUMBER_THEN_CAPTION.match(fields[1])):
            name, caption = fields[0], match["caption"]
        else:
            raise FormatError(f"{path}:{number}: expected 'image_name| comment_number| comment', got {text[:80]!r}")
        yield number, name.strip(), caption.strip()

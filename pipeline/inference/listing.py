"""What caption-batch captions: the image files under a directory, listed in a stable order
without following symlinked directories, with the entries that must not be opened (FIFOs,
devices) marked, and the directories that could not be listed recorded instead of being taken
as empty (the batch engine keeps their earlier rows). Shared by the local and the Ray engine."""
from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

logger = logging.getLogger(__name__)

DEFAULT_PATTERNS = ("*.jpg", "*.jpeg", "*.png", "*.bmp", "*.gif", "*.webp", "*.tif", "*.tiff")


# --- listing --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageFile:
    path: Path  # on disk
    key: str  # relative POSIX path as stored in OUT
    escaped: bool  # the name is not valid UTF-8; `key` is a backslash-escaped repr
    problem: str | None = None  # set for entries that must not even be opened (FIFO, device...)


def relative_key(rel: str) -> tuple[str, bool]:
    """Names that are not UTF-8 arrive as surrogate escapes (os.fsdecode), which Parquet cannot
    store: keep a readable, deterministic escape of the raw bytes and mark the row."""
    try:
        rel.encode("utf-8")
        return rel, False
    except UnicodeEncodeError:
        return os.fsencode(rel).decode("utf-8", "backslashreplace"), True


def list_images(root: Path, patterns: Sequence[str], recursive: bool = True,
                exclude: Sequence[Path] = (), unlisted: dict[str, str] | None = None) -> Iterator[ImageFile]:
    """Files under `root` whose name matches a pattern (case-insensitive), in a stable order.
    Symlinked directories are not followed (no cycles); broken symlinks and special files
    are listed so that they get an error row instead of vanishing silently. A directory that
    cannot be listed is logged and, when `unlisted` is given, recorded there as
    {path on disk: key prefix of the rows under it}."""
    lowered = [p.lower() for p in patterns]
    skip = {os.path.abspath(p) for p in exclude}
    stack: list[tuple[str, str]] = [(str(root), "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            logger.warning("cannot list %s (%s): its images are skipped", directory, err.strerror or err)
            if unlisted is not None:
                unlisted[directory] = relative_key(prefix)[0]
            continue
        subdirs = []
        for entry in entries:
            if os.path.abspath(entry.path) in skip:
                continue
            rel = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                subdirs.append((entry.path, rel + "/"))
                continue
            if not any(fnmatch.fnmatchcase(entry.name.lower(), p) for p in lowered):
                continue
            problem = _special_file_problem(entry)
            if problem == "directory":
                continue  # a symlink to a directory, named like an image
            key, escaped = relative_key(rel)
            yield ImageFile(Path(entry.path), key, escaped, problem)
        if recursive:
            stack.extend(reversed(subdirs))


def _special_file_problem(entry: os.DirEntry) -> str | None:
    try:
        if entry.is_file():  # follows symlinks: a regular file or a link to one
            return None
        if entry.is_dir():
            return "directory"
    except OSError:
        return None  # broken or looping symlink: images.check_file names the problem
    if entry.is_symlink() and not os.path.exists(entry.path):
        return None
    return "not a regular file (FIFO, socket or device); not opened"

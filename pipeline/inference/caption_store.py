"""Where caption-batch keeps its rows: the output schema, part files written atomically in a
hidden work dir beside OUT, the lock that keeps two runs off one OUT, and the final merge
(last row per path wins) that atomically replaces OUT.

A row's identity is (path, content_hash, model_id, settings): a rerun reuses an ok row only
when all four match, so captions made by another model or with other decoding settings are
never passed off as this run's."""
from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

SCHEMA = pa.schema([
    ("path", pa.string()),  # relative to the images dir, POSIX separators
    ("path_escaped", pa.bool_()),  # True: the name is not UTF-8; `path` is its backslash-escaped repr
    ("caption", pa.string()),
    ("language", pa.string()),  # the caption's language (null in outputs of older versions)
    ("mean_logprob", pa.float64()),  # mean token log-probability (<end> included): confidence
    ("status", pa.string()),  # ok | error
    ("error", pa.string()),
    ("width", pa.int32()),  # original size, upright per EXIF
    ("height", pa.int32()),
    ("content_hash", pa.string()),  # sha256 of the file's bytes; null when unreadable
    ("model_id", pa.string()),
    # Canonical JSON of every decoding setting that made the caption (beam_size, max_len,
    # length_penalty, precision, and the language for a model of several): see settings_json.
    ("settings", pa.string()),
])
# Columns that outputs of older versions lack: their rows are read as null (never matching).
_ADDED_LATER = frozenset({"settings", "language"})
Key = tuple[str, bool]  # (path, path_escaped): identifies a row across runs


def settings_json(settings: dict) -> str:
    """One spelling per set of settings (sorted keys, no spaces), so equal settings compare
    equal as strings in the file and when resuming."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


class Previous(NamedTuple):
    """What a rerun needs to know of the latest row of a path."""
    content_hash: str | None  # of an ok row; None for an error row (always retried)
    same_identity: bool  # made by this model with these settings


class CaptionUsageError(ValueError):
    """Bad arguments the user must fix (missing directory, foreign OUT file, busy OUT)."""


def parts_dir_for(out: Path) -> Path:
    return out.parent / f".{out.name}.parts"


def lock_parts_dir(parts_dir: Path):
    parts_dir.mkdir(parents=True, exist_ok=True)
    handle = open(parts_dir / "lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise CaptionUsageError(f"another caption-batch run is writing {parts_dir.parent}; wait for it "
                                f"or choose another output path") from None
    return handle


class PartWriter:
    """Buffers rows; every `part_size` rows becomes one part file, written to a temp name and
    renamed, so a part on disk is always complete."""

    def __init__(self, parts_dir: Path, first_seq: int, part_size: int):
        self.parts_dir, self.seq, self.part_size = parts_dir, first_seq, part_size
        self.rows: list[dict] = []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.part_size:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        table = pa.Table.from_pylist(self.rows, schema=SCHEMA)
        path = self.parts_dir / f"part-{self.seq:08d}.parquet"
        tmp = path.with_suffix(".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        self.seq, self.rows = self.seq + 1, []


def part_files(parts_dir: Path) -> list[Path]:
    for stale in parts_dir.glob("*.tmp"):  # a write a killed run never finished
        stale.unlink()
    return sorted(parts_dir.glob("part-*.parquet"))


def _check_schema(path: Path, is_out: bool) -> pq.ParquetFile | None:
    try:
        pf = pq.ParquetFile(path)
    except Exception as err:
        if is_out:
            raise CaptionUsageError(f"{path} exists but is not a Parquet file ({err}); "
                                    f"delete it or choose another output path") from None
        logger.warning("ignoring unreadable part %s (%s): its images are captioned again", path, err)
        return None
    missing = set(SCHEMA.names) - set(pf.schema_arrow.names) - _ADDED_LATER
    if missing:
        raise CaptionUsageError(f"{path} is not a caption-batch output (no column(s) {sorted(missing)}); "
                                f"delete it or choose another output path")
    return pf


def row_sources(out: Path, parts: list[Path]) -> list[pq.ParquetFile]:
    """Readable row sources, oldest first: the previous OUT, then the parts in order."""
    found = [_check_schema(out, True)] if out.exists() else []
    return [pf for pf in found + [_check_schema(p, False) for p in parts] if pf is not None]


def _batches(pf: pq.ParquetFile, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """Batches of `columns`; a column an older OUT lacks comes back as nulls."""
    present = set(pf.schema_arrow.names)
    for batch in pf.iter_batches(columns=[c for c in columns if c in present]):
        # By name, in the order asked: the file's column order is not ours to rely on.
        arrays = [batch.column(c) if c in present else pa.nulls(len(batch), SCHEMA.field(c).type)
                  for c in columns]
        yield pa.RecordBatch.from_arrays(arrays, names=list(columns))


def _keys(pf: pq.ParquetFile, columns: Sequence[str] = ()) -> Iterator[dict]:
    for batch in _batches(pf, ["path", "path_escaped", *columns]):
        yield batch.to_pydict()


def previous_rows(sources: list[pq.ParquetFile], model_id: str, settings: str) -> dict[Key, Previous]:
    """(path, escaped) -> what its latest row says: an ok row can be reused when the file's
    bytes are unchanged and it has the same identity (model and settings JSON, exactly)."""
    latest: dict[Key, Previous] = {}
    for pf in sources:
        for cols in _keys(pf, ["status", "content_hash", "model_id", "settings"]):
            for p, e, s, h, m, st in zip(cols["path"], cols["path_escaped"], cols["status"],
                                         cols["content_hash"], cols["model_id"], cols["settings"]):
                latest[(p, e)] = Previous(h if s == "ok" else None, m == model_id and st == settings)
    return latest


def merge_rows(sources: list[pq.ParquetFile], listed: set[Key], target: Path,
               keep_unlisted: Callable[[Key], bool] | None = None) -> dict[str, int]:
    """Write, into `target`, the latest row of every listed path across `sources`, plus those
    of paths not listed for which keep_unlisted(key) is true (their directory could not be
    listed). Two streaming passes (keys, then rows), so memory holds the keys, not the rows.
    Counts: ok and error rows written, kept_unlisted among them."""
    winner: dict[Key, tuple[int, int]] = {}
    unlisted_kept: dict[Key, bool] = {}  # asked once per key: the answer may touch the disk
    for s, pf in enumerate(sources):
        row = 0
        for cols in _keys(pf):
            for key in zip(cols["path"], cols["path_escaped"]):
                if key not in listed and keep_unlisted is not None and key not in unlisted_kept:
                    unlisted_kept[key] = keep_unlisted(key)
                if key in listed or unlisted_kept.get(key):
                    winner[key] = (s, row)
                row += 1
    counts = {"ok": 0, "error": 0, "kept_unlisted": sum(unlisted_kept.values())}
    with pq.ParquetWriter(target, SCHEMA) as writer:
        if not sources:
            writer.write_table(SCHEMA.empty_table())
        for s, pf in enumerate(sources):
            row = 0
            for batch in _batches(pf, SCHEMA.names):
                keys = zip(batch.column("path").to_pylist(), batch.column("path_escaped").to_pylist())
                keep = [winner.get(key) == (s, row + i) for i, key in enumerate(keys)]
                row += len(batch)
                table = pa.Table.from_batches([batch]).filter(pa.array(keep, pa.bool_())).cast(SCHEMA)
                for status in table.column("status").to_pylist():
                    counts[status] = counts.get(status, 0) + 1
                writer.write_table(table)
    return counts


def _provably_absent(path: Path, listable: dict[str, bool]) -> bool:
    """True only when `path` does not exist and its directory lists fine now (or is gone too):
    a failing lstat or listing proves nothing on a flaky mount. `listable` caches per directory."""
    try:
        os.lstat(path)
        return False
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError:
        return False
    parent = str(path.parent)
    if parent not in listable:
        try:
            with os.scandir(parent):
                listable[parent] = True
        except (FileNotFoundError, NotADirectoryError):
            listable[parent] = True  # the directory itself is gone
        except OSError:
            listable[parent] = False
    return listable[parent]


def unlisted_keeper(root: Path, prefixes: Sequence[str]) -> Callable[[Key], bool]:
    """Merge rule for earlier rows of paths this run did not list: keep those under a directory
    that could not be listed, unless the file is provably absent."""
    listable: dict[str, bool] = {}

    def keep(key: Key) -> bool:
        path, escaped = key
        if not any(path.startswith(p) for p in prefixes):
            return False  # its directory was listed: the file is gone or no longer matches
        if escaped:
            return True  # the name on disk cannot be rebuilt from its escape: keep, never guess
        return not _provably_absent(root / path, listable)
    return keep


def replace_atomically(tmp: Path, out: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())  # the data is on disk before the name points at it
    os.replace(tmp, out)

"""Where caption-batch keeps its rows: the output schema, part files written atomically in a
hidden work dir beside OUT, the lock that keeps two runs off one OUT, and the final merge
(last row per path wins) that atomically replaces OUT."""
from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

SCHEMA = pa.schema([
    ("path", pa.string()),  # relative to the images dir, POSIX separators
    ("path_escaped", pa.bool_()),  # True: the name is not UTF-8; `path` is its backslash-escaped repr
    ("caption", pa.string()),
    ("mean_logprob", pa.float64()),  # mean token log-probability (<end> included): confidence
    ("status", pa.string()),  # ok | error
    ("error", pa.string()),
    ("width", pa.int32()),  # original size, upright per EXIF
    ("height", pa.int32()),
    ("content_hash", pa.string()),  # sha256 of the file's bytes; null when unreadable
    ("model_id", pa.string()),
])
Key = tuple[str, bool]  # (path, path_escaped): identifies a row across runs


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
    missing = set(SCHEMA.names) - set(pf.schema_arrow.names)
    if missing:
        raise CaptionUsageError(f"{path} is not a caption-batch output (no column(s) {sorted(missing)}); "
                                f"delete it or choose another output path")
    return pf


def row_sources(out: Path, parts: list[Path]) -> list[pq.ParquetFile]:
    """Readable row sources, oldest first: the previous OUT, then the parts in order."""
    found = [_check_schema(out, True)] if out.exists() else []
    return [pf for pf in found + [_check_schema(p, False) for p in parts] if pf is not None]


def _keys(pf: pq.ParquetFile, columns: Sequence[str] = ()) -> Iterator[dict]:
    for batch in pf.iter_batches(columns=["path", "path_escaped", *columns]):
        yield batch.to_pydict()


def previously_captioned(sources: list[pq.ParquetFile], model_id: str) -> dict[Key, str]:
    """(path, escaped) -> content hash of the latest row, kept only when it is an ok row of
    this model: those files need no new caption while their bytes stay the same."""
    latest: dict[Key, tuple[str, str, str]] = {}
    for pf in sources:
        for cols in _keys(pf, ["status", "content_hash", "model_id"]):
            for p, e, s, h, m in zip(cols["path"], cols["path_escaped"], cols["status"],
                                     cols["content_hash"], cols["model_id"]):
                latest[(p, e)] = (s, h, m)
    return {key: h for key, (s, h, m) in latest.items() if s == "ok" and h and m == model_id}


def merge_rows(sources: list[pq.ParquetFile], listed: set[Key], target: Path) -> dict[str, int]:
    """Write, into `target`, the latest row of every listed path across `sources`. Two streaming
    passes (keys, then rows), so memory holds the keys, not the rows."""
    winner: dict[Key, tuple[int, int]] = {}
    for s, pf in enumerate(sources):
        row = 0
        for cols in _keys(pf):
            for key in zip(cols["path"], cols["path_escaped"]):
                if key in listed:
                    winner[key] = (s, row)
                row += 1
    counts = {"ok": 0, "error": 0}
    with pq.ParquetWriter(target, SCHEMA) as writer:
        if not sources:
            writer.write_table(SCHEMA.empty_table())
        for s, pf in enumerate(sources):
            row = 0
            for batch in pf.iter_batches(columns=SCHEMA.names):
                keys = zip(batch.column("path").to_pylist(), batch.column("path_escaped").to_pylist())
                keep = [winner.get(key) == (s, row + i) for i, key in enumerate(keys)]
                row += len(batch)
                table = pa.Table.from_batches([batch]).filter(pa.array(keep, pa.bool_())).cast(SCHEMA)
                for status in table.column("status").to_pylist():
                    counts[status] = counts.get(status, 0) + 1
                writer.write_table(table)
    return counts


def replace_atomically(tmp: Path, out: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())  # the data is on disk before the name points at it
    os.replace(tmp, out)

"""Remote IMAGES and OUT for the ray engine: any URI pyarrow.fs opens (s3://, gs://, hdfs://,
file://), else any filesystem fsspec knows when it is installed.

- IMAGES as a URI: listed with the same name patterns (sorted by path); each decoding task
  copies its files into a local temporary folder and runs the local engine's hashing and
  decoding on the copies, so rows and error messages are the local engine's.
- OUT as a URI: a directory of Parquet parts (`part-<run>-00000.parquet`, ...; same schema as a
  local OUT), readable as one table by pyarrow, pandas, DuckDB or Ray. The run keeps its state
  in a local staging file: OUT's parts are downloaded as the parts of an earlier run (so
  resume works as locally), the merged rows are uploaded as new parts, then the older parts
  are deleted (a reader in between may see both).
"""
from __future__ import annotations

import fnmatch
import hashlib
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.encoders.runtimes import default_cache_dir
from pipeline.inference.listing import ImageFile
from pipeline.inference.caption_store import SCHEMA, CaptionUsageError

logger = logging.getLogger(__name__)

ROWS_PER_UPLOADED_PART = 1_000_000  # ~100 MB of rows per part of a remote OUT
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(path: str | Path) -> bool:
    """s3://bucket/x, gs://..., file:///... (a pathlib.Path has lost its '//' already: not a URI)."""
    return isinstance(path, str) and bool(_URI.match(path))


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as err:
        try:
            import fsspec
        except ImportError:
            raise CaptionUsageError(f"{uri}: pyarrow cannot open this URI ({err}) and fsspec is not "
                                    f"installed (pip install fsspec and its filesystem package)") from None
        fs_, path = fsspec.core.url_to_fs(uri)
        fs = pafs.PyFileSystem(pafs.FSSpecHandler(fs_))
    return fs, path.rstrip("/")


def list_remote(uri: str, patterns: Sequence[str], recursive: bool) -> tuple[pafs.FileSystem, list[ImageFile]]:
    """Files under `uri` whose name matches a pattern (case-insensitive); ImageFile.path holds the
    filesystem's path, the key is relative to `uri`."""
    fs, base = filesystem(uri)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        raise CaptionUsageError(f"{uri}: no such directory; pass the folder of images to caption")
    lowered = [p.lower() for p in patterns]
    found = sorted(info.path for info in fs.get_file_info(pafs.FileSelector(base, recursive=recursive))
                   if info.type == pafs.FileType.File
                   and any(fnmatch.fnmatchcase(info.base_name.lower(), p) for p in lowered))
    return fs, [ImageFile(Path(p), p[len(base) + 1:], False) for p in found]


def local_copies(fs: pafs.FileSystem, files: Sequence[ImageFile], folder: Path) -> list[ImageFile]:
    """The files copied into `folder`, same keys; one that cannot be fetched gets a problem
    (an error row), never an exception."""
    copies = []
    for i, file in enumerate(files):
        target = folder / f"{i}{file.path.suffix}"
        try:
            with fs.open_input_stream(str(file.path)) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
            copies.append(ImageFile(target, file.key, file.escaped))
        except Exception as err:  # missing, permission, network: this file's row says so
            copies.append(ImageFile(file.path, file.key, file.escaped, f"cannot read file ({err})"))
    return copies


def staging_file(uri: str) -> Path:
    """Where a run with remote OUT keeps its rows and parts (resume state) on this machine."""
    return default_cache_dir().parent / "ray-out" / hashlib.sha256(uri.encode()).hexdigest()[:16] / "captions.parquet"


def _remote_parts(fs: pafs.FileSystem, base: str) -> list[str]:
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return []
    return sorted(info.path for info in fs.get_file_info(pafs.FileSelector(base))
                  if info.type == pafs.FileType.File and fnmatch.fnmatchcase(info.base_name, "part-*.parquet"))


def download_parts(uri: str, parts_dir: Path) -> int:
    """OUT's parts as the first part files of `parts_dir` (empty), oldest first. Returns how many."""
    fs, base = filesystem(uri)
    remote = _remote_parts(fs, base)
    for seq, path in enumerate(remote):
        target = parts_dir / f"part-{seq:08d}.parquet"
        with fs.open_input_stream(path) as source, open(target.with_suffix(".tmp"), "wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
        target.with_suffix(".tmp").rename(target)
    if remote:
        logger.info("resuming from %d part(s) of %s", len(remote), uri)
    return len(remote)


def upload(staging: Path, uri: str) -> list[str]:
    """The rows of `staging` as new parts of `uri`, then the older parts deleted. Returns the new parts."""
    fs, base = filesystem(uri)
    fs.create_dir(base, recursive=True)
    old = _remote_parts(fs, base)
    run = time.strftime("%Y%m%dT%H%M%S")
    written: list[str] = []
    writer, rows = None, 0
    try:
        for batch in pq.ParquetFile(staging).iter_batches(batch_size=65536):
            if writer is None or rows >= ROWS_PER_UPLOADED_PART:
                if writer is not None:
                    writer.close()
                written.append(f"{base}/part-{run}-{len(written):05d}.parquet")
                writer, rows = pq.ParquetWriter(written[-1], SCHEMA, filesystem=fs), 0
            writer.write_batch(batch)
            rows += len(batch)
        if writer is None:  # no rows: still an OUT that reads as an empty table
            written.append(f"{base}/part-{run}-00000.parquet")
            pq.write_table(SCHEMA.empty_table(), written[-1], filesystem=fs)
    finally:
        if writer is not None:
            writer.close()
    for path in old:
        if path not in written:
            fs.delete_file(path)
    return written

"""Run an image encoder once over every image into Parquet, incrementally.

Each row is keyed by sha256(features identity + sha256 of the image bytes). The identity
(`features_identity`) holds everything that changes the vectors: the encoder fingerprint
(name, weights, preprocessing), the autocast precision, the device type, the spatial level
and FEATURES_CODE_VERSION. A rerun reuses every row whose key is already in the output file
and encodes only new or changed images; any change of identity re-encodes everything. Images
that cannot be decoded go to a small JSON errors file and are skipped.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.data.images import ImageLoadError, check_file, make_loader, read_ahead
from pipeline.encoders import Encoder, EncoderConfig, build_encoder
from pipeline.encoders.feature_maps import SPATIAL_LEVELS, SpatialEncoder
from pipeline.encoders.runtimes import (ExportedRuntime, TorchRuntime, build_runtime, check_runtime_name,
                                        default_threads, default_workers)
from pipeline.feature_table import GRID_DTYPE, META_KEY, fixed_list_to_numpy, grid_type, read_meta
from pipeline.hashing import file_sha256
from pipeline.runtime import PRECISIONS, autocast_dtype, precision_name, resolve_device

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 64 << 20  # rows buffered before a row group is written: bounds memory with grid on
# Bump when the code that turns pixels into stored vectors changes (pooling, rounding, taps):
# it is part of every row's key, so old caches are re-encoded instead of silently reused.
FEATURES_CODE_VERSION = 2


@dataclass
class FeaturesConfig:
    batch_size: int = 64
    num_workers: int = field(default_factory=default_workers)  # decoding processes beside the forward pass
    device: str = "auto"  # auto = cuda if available, else cpu
    # Also store a (C, h, w) spatial map for the attention decoders (pipeline/encoders/feature_maps.py):
    # none | head | s16 | s32 | s16+s32 | s8+s16+s32. In float16 for Lite0: 42 KB per image for s16 or
    # s16+s32 (7x7x432), 46 KB for s8+s16+s32 (7x7x472).
    spatial: str = "none"
    precision: str = "auto"  # auto = bf16 (fp16 if no bf16) autocast on CUDA, fp32 on CPU | fp32 | bf16 | fp16
    # Where the encoder runs (pipeline/encoders/runtimes.py): auto = torch on CUDA, else the fastest
    # installed CPU runtime (openvino, then onnxruntime) | torch | openvino | onnxruntime
    runtime: str = "auto"
    threads: int = 0  # encoder threads; 0 = every core (measured best beside the workers: README Performance)
    # local | ray: the encode loop as Ray Data operators on a local or remote cluster ($RAY_ADDRESS),
    # same file (pipeline/distributed/ray_features.py; pip install -e '.[ray]')
    engine: str = "local"

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.num_workers < 0:
            raise ValueError(f"features.batch_size must be >= 1 and features.num_workers >= 0, "
                             f"got {self.batch_size} and {self.num_workers}")
        if self.precision not in ("auto", *PRECISIONS):
            raise ValueError(f"features.precision {self.precision!r}: use auto, {', '.join(PRECISIONS)}")
        check_runtime_name(self.runtime, "features.runtime")
        if self.threads < 0:
            raise ValueError(f"features.threads must be >= 0 (0 = automatic), got {self.threads}")
        if self.spatial not in SPATIAL_LEVELS:
            raise ValueError(f"features.spatial {self.spatial!r}: use one of {', '.join(SPATIAL_LEVELS)}")
        if self.engine not in ("local", "ray"):
            raise ValueError(f"features.engine {self.engine!r}: use local or ray")


def features_identity(encoder_fingerprint: str, precision: str, device_type: str, spatial: str,
                      runtime: str = "torch") -> str:
    """Everything that decides the stored vectors, as one short id (stored in the file's metadata).
    The runtime joins only when it is not torch, so caches from before runtimes stay valid."""
    ident = {"encoder": encoder_fingerprint, "precision": precision, "device": device_type,
             "spatial": spatial, "code": FEATURES_CODE_VERSION}
    if runtime != "torch":
        ident["runtime"] = runtime
    return "feat-" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def content_key(path: Path, fingerprint: str) -> str:
    """Cache key of one image under one encoder; raises ImageLoadError for unreadable files."""
    check_file(path)
    try:
        image_digest = file_sha256(path)
    except OSError as err:
        raise ImageLoadError(f"cannot read file ({err.strerror or err})") from None
    return hashlib.sha256(f"{fingerprint}\n{image_digest}".encode()).hexdigest()


class _RowWriter:
    """Buffers rows and writes a row group each time about _CHUNK_BYTES have accumulated."""

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.dim, self.grid_size = meta["feature_dim"], int(np.prod(meta["grid_shape"] or [0]))
        fields = [pa.field("image_id", pa.string()), pa.field("key", pa.string()),
                  pa.field("feature", pa.list_(pa.float16(), self.dim))]
        if self.grid_size:
            fields.append(pa.field("grid", grid_type(self.grid_size),
                                   metadata={b"encoding": b"float16 little-endian, (C, h, w) in C order"}))
        self.schema = pa.schema(fields, metadata={META_KEY: json.dumps(meta)})
        self.writer = pq.ParquetWriter(path, self.schema, compression="zstd")
        self.rows_per_chunk = max(1, _CHUNK_BYTES // (2 * (self.dim + self.grid_size)))
        self.buffer: dict[str, list] = defaultdict(list)
        self.n_rows = 0

    def add(self, ids: list[str], keys: list[str], features: np.ndarray, grid: np.ndarray | None) -> None:
        self.buffer["image_id"] += ids
        self.buffer["key"] += keys
        self.buffer["feature"].append(features.reshape(len(ids), self.dim).astype(np.float16))
        if self.grid_size:
            self.buffer["grid"].append(grid.reshape(len(ids), self.grid_size).astype(GRID_DTYPE))
        if len(self.buffer["image_id"]) >= self.rows_per_chunk:
            self.flush()

    def flush(self) -> None:
        n = len(self.buffer["image_id"])
        if not n:
            return
        columns = [pa.array(self.buffer["image_id"], pa.string()), pa.array(self.buffer["key"], pa.string())]
        flat = pa.array(np.concatenate(self.buffer["feature"]).reshape(-1), pa.float16())
        columns.append(pa.FixedSizeListArray.from_arrays(flat, self.dim))
        if self.grid_size:
            data = np.ascontiguousarray(np.concatenate(self.buffer["grid"]))
            columns.append(pa.FixedSizeBinaryArray.from_buffers(grid_type(self.grid_size), n, [None, pa.py_buffer(data)]))
        self.writer.write_table(pa.Table.from_arrays(columns, schema=self.schema))
        self.n_rows += n
        self.buffer.clear()

    def close(self) -> None:
        self.flush()
        self.writer.close()


def _copy_reused(old: Path, ids_by_key: dict[str, list[str]], writer: _RowWriter) -> set[str]:
    """Stream rows of the previous output whose key is still wanted; returns the keys copied."""
    done: set[str] = set()
    columns = ["key", "feature"] + (["grid"] if writer.grid_size else [])
    for batch in pq.ParquetFile(old).iter_batches(batch_size=1024, columns=columns):
        keys = batch.column("key").to_pylist()
        rows = []
        for i, k in enumerate(keys):  # one copy per key: identical images share rows of one key
            if k in ids_by_key and k not in done:
                done.add(k)
                rows.append(i)
        if not rows:
            continue
        take = pa.array(rows)
        feats = fixed_list_to_numpy(batch.column("feature").take(take))
        grid = fixed_list_to_numpy(batch.column("grid").take(take)) if writer.grid_size else None
        repeat = [len(ids_by_key[keys[i]]) for i in rows]  # one image content, several ids
        writer.add([image_id for i in rows for image_id in ids_by_key[keys[i]]],
                   [keys[i] for i, n in zip(rows, repeat) for _ in range(n)],
                   np.repeat(feats, repeat, axis=0), None if grid is None else np.repeat(grid, repeat, axis=0))
    return done


def store_batch(todo: list[tuple[str, Path]], ids_by_key: dict[str, list[str]], writer: _RowWriter,
                failures: list[dict], failed: list[tuple[int, str]], indices: list[int], pooled: np.ndarray | None,
                grid: np.ndarray | None) -> None:
    """One encoded batch (float16 arrays, rows of `indices` into todo) as rows of every image id
    of its contents; `failed`: (index into todo, reason) of the images that could not be read."""
    for index, reason in failed:
        key, path = todo[index]
        failures += [{"image_id": i, "path": str(path), "error": reason} for i in ids_by_key[key]]
    if not indices:
        return
    keys = [todo[i][0] for i in indices]
    n = [len(ids_by_key[k]) for k in keys]
    writer.add([i for k in keys for i in ids_by_key[k]], [k for k, m in zip(keys, n) for _ in range(m)],
               np.repeat(pooled, n, axis=0), np.repeat(grid, n, axis=0) if writer.grid_size else None)


def _encode(encoder: TorchRuntime | ExportedRuntime, preprocess, todo: list[tuple[str, Path]],
            ids_by_key: dict[str, list[str]], cfg: FeaturesConfig, device: torch.device, writer: _RowWriter,
            failures: list[dict]) -> int:
    loader = make_loader([p for _, p in todo], preprocess, cfg.batch_size, cfg.num_workers,
                         pin_memory=device.type == "cuda")
    n_done, start, last_log = 0, time.perf_counter(), time.perf_counter()
    # Without worker processes, the next batch is decoded in a thread while this one is encoded.
    batches = read_ahead(loader) if cfg.num_workers == 0 else loader
    with torch.inference_mode():
        for batch in batches:
            pooled, grid = encoder(batch.images) if batch.images is not None else (None, None)
            store_batch(todo, ids_by_key, writer, failures, batch.failures, batch.indices,
                        None if pooled is None else pooled.half().cpu().numpy(),
                        grid.half().cpu().numpy() if writer.grid_size and grid is not None else None)
            n_done += len(batch.indices)
            if time.perf_counter() - last_log > 10:
                last_log = time.perf_counter()
                logger.info("encoded %d/%d images (%.1f images/s)", n_done, len(todo), n_done / (last_log - start))
    return n_done


def build_features_encoder(encoder_cfg: EncoderConfig, cfg: FeaturesConfig, device: torch.device
                           ) -> tuple[Encoder, TorchRuntime | ExportedRuntime, dict[str, Any], int]:
    """The encoder on its runtime as this stage runs it (also in each Ray actor), the file's
    metadata (`features_id` included) and the threads it runs with."""
    encoder = build_encoder(encoder_cfg).optimize_for_inference()
    # channels_last: faster on GPU tensor cores, and measured faster on CPU (oneDNN) too
    encoder.to(device, memory_format=torch.channels_last)
    spatial = SpatialEncoder(encoder, cfg.spatial)
    grid_shape = spatial.spatial_shape()  # known before the first batch: the schema is written up front
    precision = precision_name(autocast_dtype(cfg.precision, device))
    threads = cfg.threads or default_threads()
    torch.set_num_threads(threads)
    runtime = build_runtime(spatial, cfg.runtime, device, precision, threads)
    features_id = features_identity(encoder.fingerprint, precision, device.type, cfg.spatial, runtime.name)
    meta = {"name": encoder.name, "weights": encoder.weights, "weights_id": encoder.weights_id,
            "fingerprint": encoder.fingerprint, "preprocess": encoder.preprocess.to_dict(),
            "feature_dim": encoder.feature_dim, "grid_shape": grid_shape, "spatial": cfg.spatial,
            "precision": precision, "device_type": device.type, "code_version": FEATURES_CODE_VERSION,
            "runtime": runtime.name, "features_id": features_id}
    return encoder, runtime, meta, threads


def extract_features(items: list[tuple[str, Path]], encoder_cfg: EncoderConfig, cfg: FeaturesConfig,
                     out_path: Path, errors_path: Path, encode_remote: Callable | None = None) -> dict[str, Any]:
    """Write one row per decodable image of `items` ((image_id, path) pairs) to `out_path`.
    `encode_remote` replaces the local encode loop (features.engine: ray passes Ray's, through
    pipeline.distributed.ray_features.extract_features_ray: this module knows no engine)."""
    if cfg.engine != "local" and encode_remote is None:
        raise ValueError(f"features.engine {cfg.engine!r}: call pipeline.distributed.ray_features."
                         f"extract_features_ray (the features stage does), or set features.engine: local")
    start = time.perf_counter()
    out_path, errors_path = Path(out_path), Path(errors_path)
    ids = [image_id for image_id, _ in items]
    if len(set(ids)) != len(ids):
        dupes = sorted(i for i, n in Counter(ids).items() if n > 1)[:5]
        raise ValueError(f"duplicate image ids in the features input, e.g. {dupes}: ids must be unique")
    device = resolve_device(cfg.device)
    encoder, runtime, meta, threads = build_features_encoder(encoder_cfg, cfg, device)
    features_id, precision, grid_shape = meta["features_id"], meta["precision"], meta["grid_shape"]

    failures: list[dict] = []
    ids_by_key: dict[str, list[str]] = defaultdict(list)
    path_by_key: dict[str, Path] = {}
    for image_id, path in items:
        try:
            key = content_key(Path(path), features_id)
        except ImageLoadError as err:
            failures.append({"image_id": image_id, "path": str(path), "error": str(err)})
            continue
        ids_by_key[key].append(image_id)
        path_by_key.setdefault(key, Path(path))

    old = None
    if out_path.is_file():
        try:
            old = read_meta(out_path)
        except (ValueError, OSError, pa.ArrowException) as err:  # not ours or damaged: just rebuild it
            logger.warning("cannot reuse %s (%s): re-encoding everything", out_path, err)
    reusable = old is not None and old.get("features_id") == features_id
    if old is not None and not reusable:
        was = {k: old.get(k) for k in ("fingerprint", "precision", "device_type", "spatial", "code_version",
                                       "runtime")}
        now = {k: meta[k] for k in was}
        logger.info("%s was made by %s, now %s: re-encoding everything", out_path, was, now)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    writer = _RowWriter(tmp, meta)
    try:
        reused = _copy_reused(out_path, ids_by_key, writer) if reusable else set()
        todo = [(k, p) for k, p in path_by_key.items() if k not in reused]
        logger.info("%s: %d images, %d reused, %d to encode, %d unreadable", encoder.name, len(items),
                    sum(len(ids_by_key[k]) for k in reused), len(todo), len(failures))
        encode_start = time.perf_counter()
        if encode_remote is not None and todo:
            n_encoded = encode_remote(encoder_cfg, cfg, meta, todo, ids_by_key, writer, failures)
        else:
            n_encoded = _encode(runtime, encoder.preprocess, todo, ids_by_key, cfg, device, writer, failures) \
                if todo else 0
        encode_seconds = time.perf_counter() - encode_start
        writer.close()
        os.replace(tmp, out_path)  # readers never see a half-written file
    finally:
        if tmp.exists():
            writer.writer.close()
            tmp.unlink()

    _write_errors(errors_path, failures)
    for failure in failures[:10]:
        logger.warning("skipped %s (%s): %s", failure["image_id"], failure["path"], failure["error"])
    seconds = time.perf_counter() - start
    stats = {"n_total": len(items), "n_rows": writer.n_rows, "n_encoded": n_encoded,
             "n_reused": sum(len(ids_by_key[k]) for k in reused), "n_failed": len(failures),
             "seconds": round(seconds, 3), "encode_seconds": round(encode_seconds, 3),
             "images_per_s": round(n_encoded / encode_seconds, 2) if n_encoded else 0.0,
             "encoder": encoder.name, "fingerprint": encoder.fingerprint, "features_id": features_id,
             "spatial": cfg.spatial, "grid_shape": grid_shape, "precision": precision, "device": str(device),
             "runtime": runtime.name, "threads": threads, "num_workers": cfg.num_workers}
    logger.info("features: %s", stats)
    return stats


def _write_errors(path: Path, failures: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(failures, indent=1) + "\n")
    os.replace(tmp, path)

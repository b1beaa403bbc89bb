"""features.engine: ray -- the features stage's encode loop as Ray Data operators.

extract_features (pipeline/features.py) does everything else as with the local engine: the
content keys, the reuse of rows, the file and its metadata, the errors file. Here, the images
still to encode go

    decode: CPU tasks running the local loader's ImageDataset (one block of batch_size images)
    -> encode: a pool of actors, each holding the encoder on its runtime (build_features_encoder,
       the local engine's own; an actor whose features_id differs from the driver's refuses to run)
    -> float16 rows back to the driver, in order, stored by store_batch as the local loop does.

The device is the one the stage resolved (features.device, where the stage runs): actors take one
GPU each when it is cuda. The cluster: $RAY_ADDRESS when set, else a local one for the run.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from pipeline.data.images import ImageDataset
from pipeline.distributed.ray_cluster import (Failure, RayOptions, each_or_error, plan_actors, ray_session,
                                              read_task_memory, require_ray)
from pipeline.encoders import EncoderConfig, Preprocess
from pipeline.features import FeaturesConfig, _RowWriter, build_features_encoder, extract_features, store_batch

logger = logging.getLogger(__name__)

_DECODED = pa.schema([("index", pa.int64()), ("error", pa.string()), ("image", pa.binary())])
_ENCODED = pa.schema([("index", pa.int64()), ("error", pa.string()), ("pooled", pa.binary()), ("grid", pa.binary())])


def _decode_block(block: pa.Table, preprocess: Preprocess) -> pa.Table:
    """Read task: decode a block of images as the local loader does; failures are rows."""
    rows = block.to_pylist()
    dataset = ImageDataset([Path(r["path"]) for r in rows], preprocess)
    out = []
    for i, r in enumerate(rows):
        try:
            _, tensor, error, _ = dataset[i]
        except Exception as err:  # unexpected: still this image's failure, not the block's end
            tensor, error = None, f"reading failed ({type(err).__name__}: {err})"
        out.append({"index": r["index"], "error": error, "image": None if tensor is None else tensor.numpy().tobytes()})
    return pa.Table.from_pylist(out, schema=_DECODED)


class _EncodeActor:
    def __init__(self, encoder_cfg: EncoderConfig, cfg: FeaturesConfig, features_id: str, device: str):
        encoder, self.runtime, meta, _ = build_features_encoder(encoder_cfg, cfg, torch.device(device))
        if meta["features_id"] != features_id:
            raise ValueError(f"this Ray node encodes as {meta['features_id']} ({meta['runtime']}), the stage as "
                             f"{features_id}: run on alike nodes, or set features.runtime explicitly")
        self.shape = (3, encoder.preprocess.size, encoder.preprocess.size)

    @torch.inference_mode()
    def _encode(self, images: torch.Tensor) -> list[tuple[bytes, bytes | None]]:
        pooled, grid = self.runtime(images)
        pooled = pooled.half().cpu().numpy()
        grid = None if grid is None else grid.half().cpu().numpy()
        return [(pooled[i].tobytes(), None if grid is None else grid[i].tobytes()) for i in range(len(pooled))]

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        out = [{"index": r["index"], "error": r["error"], "pooled": None, "grid": None}
               for r in rows if r["image"] is None]  # failures first, as the local loop stores them
        decoded = [r for r in rows if r["image"] is not None]
        if decoded:
            images = np.stack([np.frombuffer(r["image"], np.float32) for r in decoded]).reshape(-1, *self.shape)
            for r, result in zip(decoded, each_or_error(self._encode, torch.from_numpy(images))):
                out.append({"index": r["index"], "error": result.error, "pooled": None, "grid": None}
                           if isinstance(result, Failure) else
                           {"index": r["index"], "error": None, "pooled": result[0], "grid": result[1]})
        return pa.Table.from_pylist(out, schema=_ENCODED)


def _arrays(rows: list[dict], column: str, width: int) -> np.ndarray | None:
    if not rows or not width:
        return None
    return np.frombuffer(b"".join(r[column] for r in rows), np.float16).reshape(len(rows), width)


def encode_with_ray(encoder_cfg: EncoderConfig, cfg: FeaturesConfig, meta: dict[str, Any],
                    todo: list[tuple[str, Path]], ids_by_key: dict[str, list[str]], writer: _RowWriter,
                    failures: list[dict]) -> int:
    """extract_features' encode loop on Ray: same arguments as its local loop, same rows."""
    options = RayOptions()
    with ray_session(options.address) as init_seconds:
        ray = require_ray()
        plan = plan_actors(meta["device_type"], cfg.threads, options)
        preprocess = Preprocess.from_dict(meta["preprocess"])
        table = pa.table({"index": pa.array(range(len(todo)), pa.int64()), "path": [str(p) for _, p in todo]})
        ds = ray.data.from_arrow([table.slice(i, cfg.batch_size) for i in range(0, len(todo), cfg.batch_size)])
        ds = ds.map_batches(_decode_block, batch_size=None, batch_format="pyarrow",
                            fn_kwargs={"preprocess": preprocess}, num_cpus=options.read_cpus,
                            memory=read_task_memory(cfg.batch_size, preprocess.size))
        actor_cfg = dataclasses.replace(cfg, threads=plan.threads)
        ds = ds.map_batches(_EncodeActor, batch_size=cfg.batch_size, batch_format="pyarrow", compute=plan.pool(),
                            fn_constructor_kwargs={"encoder_cfg": encoder_cfg, "cfg": actor_cfg,
                                                   "features_id": meta["features_id"], "device": plan.device},
                            **plan.remote_args())
        grid_size = int(np.prod(meta["grid_shape"] or [0]))
        n_done, started = 0, time.perf_counter()
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            rows = batch.to_pylist()
            ok = [r for r in rows if r["error"] is None]
            store_batch(todo, ids_by_key, writer, failures, [(r["index"], r["error"]) for r in rows if r["error"]],
                        [r["index"] for r in ok], _arrays(ok, "pooled", meta["feature_dim"]),
                        _arrays(ok, "grid", grid_size))
            n_done += len(ok)
    logger.info("features (ray): %d images encoded in %.1fs (Ray start %.1fs; %d actor(s) on %s, %d threads)",
                n_done, time.perf_counter() - started, init_seconds, plan.actors, plan.device, plan.threads)
    return n_done


def extract_features_ray(items: list, encoder_cfg: EncoderConfig, cfg: FeaturesConfig, out_path, errors_path) -> dict:
    """extract_features with the encode loop on Ray (features.engine: ray): same file, same reuse."""
    return extract_features(items, encoder_cfg, cfg, out_path, errors_path, encode_remote=encode_with_ray)

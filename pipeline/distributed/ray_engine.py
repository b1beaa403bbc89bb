"""caption-batch --engine ray: the local engine's work as Ray Data operators.

    list (driver) -> hash + decode: CPU tasks, one block of `batch_size` files each
                  -> caption: a pool of actors holding the model (one GPU each on GPU clusters)
                  -> rows stream back to the driver, which writes part files and merges them into OUT

Each step runs the local engine's own code (pipeline/inference/batch.py and caption_store.py):
list_images, _CaptionDataset (hashing, the reuse decision, robust decoding),
Captioner.caption_tensors, _row, PartWriter / previous_rows / merge_rows. So rows, error rows,
resume and OUT are the local engine's. What Ray changes:
- a decoded image travels as the raw bytes of its float32 tensor in a binary column: Ray's
  tensor columns want one shape per block and choke on rows that have no image;
- nothing inside an operator fails its block (Ray's max_errored_blocks would drop it whole):
  decoding problems are error rows already, an unexpected exception on one file becomes that
  file's error row, and a batch the model cannot caption is retried image by image;
- a row's identity (model_id, settings) depends on where the model runs (device, runtime), so a
  task placed like the actors measures it before listing (resume needs it), and every actor
  refuses to start with another one (a cluster of unlike nodes);
- rows come back in listing order (Ray's preserve_order, set by ray_session).
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import torch

from pipeline.checkpoint import load_checkpoint
from pipeline.data.multilingual import checkpoint_languages, resolve_language
from pipeline.distributed import storage
from pipeline.distributed.ray_cluster import (Failure, Plan, RayOptions, each_or_error, plan_actors, ray_session,
                                              read_task_memory, require_ray, unwrap)
from pipeline.encoders import Preprocess
from pipeline.inference.batch import REASONS, CaptionConfig, _CaptionDataset, _row, warn_cut_captions
from pipeline.inference.listing import ImageFile, list_images
from pipeline.inference.caption_store import (SCHEMA, CaptionUsageError, Key, PartWriter, Previous, lock_parts_dir,
                                              merge_rows, part_files, parts_dir_for, previous_rows, replace_atomically,
                                              row_sources, settings_json, unlisted_keeper)
from pipeline.inference.captioner import Captioner

logger = logging.getLogger(__name__)

# Listed files, with what the resume needs to know of each (prev_same null: no earlier row).
_FILES = pa.schema([("key", pa.string()), ("escaped", pa.bool_()), ("path", pa.string()), ("problem", pa.string()),
                    ("prev_hash", pa.string()), ("prev_same", pa.bool_())])
_DECODED = pa.schema([("key", pa.string()), ("escaped", pa.bool_()), ("digest", pa.string()), ("reason", pa.string()),
                      ("error", pa.string()), ("width", pa.int32()), ("height", pa.int32()), ("image", pa.binary())])
# Reused files come back as a reason only; `cut`: the caption reached max_len before <end>.
_ROWS = SCHEMA.append(pa.field("reason", pa.string())).append(pa.field("cut", pa.bool_()))


def _file_table(files: list[ImageFile], previous: dict[Key, Previous]) -> pa.Table:
    prev = [previous.get((f.key, f.escaped)) for f in files]
    return pa.table({"key": [f.key for f in files], "escaped": [f.escaped for f in files],
                     "path": [str(f.path) for f in files], "problem": [f.problem for f in files],
                     "prev_hash": [p.content_hash if p else None for p in prev],
                     "prev_same": [p.same_identity if p else None for p in prev]}, schema=_FILES)


def _decode_block(block: pa.Table, preprocess: Preprocess, fs=None) -> pa.Table:
    """Read task: hash and decode a block of files with the local engine's dataset; `fs`: the
    pyarrow filesystem of remote IMAGES (files are copied to a local folder first)."""
    rows = block.to_pylist()
    files = [ImageFile(Path(r["path"]), r["key"], r["escaped"], r["problem"]) for r in rows]
    previous = {(r["key"], r["escaped"]): Previous(r["prev_hash"], r["prev_same"])
                for r in rows if r["prev_same"] is not None}
    with tempfile.TemporaryDirectory(prefix="caption-batch-") as folder:
        if fs is not None:
            files = storage.local_copies(fs, files, Path(folder))
        dataset = _CaptionDataset(files, preprocess, previous)
        return pa.Table.from_pylist([_decoded(dataset, i) for i in range(len(files))], schema=_DECODED)


def _decoded(dataset: _CaptionDataset, index: int) -> dict:
    file = dataset.files[index]
    try:
        _, tensor, error, size, digest, reason = dataset[index]
    except Exception as err:  # what the dataset does not expect is still this file's row, not the block's end
        tensor, size, digest = None, None, None
        error, reason = f"reading failed ({type(err).__name__}: {err})", dataset._reason((file.key, file.escaped), None)
    return {"key": file.key, "escaped": file.escaped, "digest": digest, "reason": reason, "error": error,
            "width": size[0] if size else None, "height": size[1] if size else None,
            "image": None if tensor is None else tensor.numpy().tobytes()}


def _build(checkpoint: dict, kwargs: dict, threads: int) -> Captioner:
    torch.set_num_threads(threads)
    return Captioner(checkpoint, threads=threads, **kwargs)


def _identity(captioner: Captioner) -> tuple[str, str]:
    return captioner.model_id, settings_json(captioner.settings)


def _probe_identity(checkpoint: dict, kwargs: dict, threads: int) -> tuple[str, str]:
    return _identity(_build(checkpoint, kwargs, threads))


class _CaptionActor:
    """Holds one Captioner; turns a batch of decoded files into output rows."""

    def __init__(self, checkpoint: list, kwargs: dict, identity: tuple[str, str], threads: int):
        self.captioner = _build(require_ray().get(checkpoint[0]), kwargs, threads)
        self.identity = _identity(self.captioner)
        if self.identity != tuple(identity):
            raise CaptionUsageError(f"this Ray node builds the model as {self.identity}, another built it as "
                                    f"{tuple(identity)} (other device, runtime or encoder weights): run on alike nodes")
        size = self.captioner.preprocess.size
        self.shape = (3, size, size)
        self.encoding, self.decoding = threading.Lock(), threading.Lock()

    def _caption(self, images: torch.Tensor) -> list[tuple[str, float, bool]]:
        # With two calls at once (Plan.pool), one encodes its batch while the other beam-searches
        # (both release the GIL), as the local engine can (caption.overlap); one of each at a time.
        with self.encoding:
            features = self.captioner.encode(images)
        with self.decoding:
            return list(zip(*self.captioner.caption_features_and_cut(features)))

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        decoded = [r for r in rows if r["image"] is not None]
        out = []  # error rows first, then captions: the local engine's order within a batch
        for r in rows:
            if r["image"] is None:
                file = ImageFile(Path(), r["key"], r["escaped"])
                row = {key: None for key in SCHEMA.names} if r["reason"] == "reused" else \
                    _row(file, self.identity, r["digest"], error=r["error"], language=self.captioner.language)
                out.append({**row, "reason": r["reason"], "cut": False})
        if decoded:
            images = np.stack([np.frombuffer(r["image"], np.float32) for r in decoded]).reshape(-1, *self.shape)
            for r, result in zip(decoded, each_or_error(self._caption, torch.from_numpy(images))):
                file, size = ImageFile(Path(), r["key"], r["escaped"]), (r["width"], r["height"])
                language = self.captioner.language
                row = _row(file, self.identity, r["digest"], error=result.error, language=language) \
                    if isinstance(result, Failure) else \
                    _row(file, self.identity, r["digest"], caption=result[0], confidence=result[1], size=size,
                         language=language)
                out.append({**row, "reason": r["reason"], "cut": not isinstance(result, Failure) and result[2]})
        return pa.Table.from_pylist(out, schema=_ROWS)


def _caption_files(ray, files: list[ImageFile], fs, preprocess: Preprocess, actor_args: dict, plan: Plan,
                   options: RayOptions, cfg: CaptionConfig, previous: dict[Key, Previous], writer: PartWriter,
                   progress: Callable[[int, int], None] | None) -> dict:
    stats = {"captioned": 0, "errors": 0, **{reason: 0 for reason in REASONS}, "cut_at_max_len": 0}
    started, first, seen, last_log = time.time(), None, 0, time.time()
    table = _file_table(files, previous)
    ds = ray.data.from_arrow([table.slice(i, cfg.batch_size) for i in range(0, len(files), cfg.batch_size)])
    ds = ds.map_batches(_decode_block, batch_size=None, batch_format="pyarrow",
                        fn_kwargs={"preprocess": preprocess, "fs": fs}, num_cpus=options.read_cpus,
                        memory=read_task_memory(cfg.batch_size, preprocess.size))
    ds = ds.map_batches(_CaptionActor, batch_size=cfg.batch_size, batch_format="pyarrow", compute=plan.pool(2),
                        fn_constructor_kwargs=actor_args, **plan.remote_args())
    batches = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    try:
        for batch in batches:
            first = first or time.time()
            for row in batch.to_pylist():
                reason = row.pop("reason")
                stats[reason] += 1
                stats["cut_at_max_len"] += bool(row.pop("cut"))
                if reason != "reused":
                    writer.add(row)
                    stats["captioned" if row["status"] == "ok" else "errors"] += 1
            seen += len(batch)
            if progress:
                progress(seen, len(files))
            elif time.time() - last_log > 30:
                last_log = time.time()
                logger.info("caption-batch (ray): %d/%d files", seen, len(files))
    finally:
        batches.close()  # stops the Ray execution when interrupted
        writer.flush()  # interrupted or not, finished rows reach a part file
    stats["caption_seconds"] = time.time() - started
    stats["first_rows_seconds"] = round((first or time.time()) - started, 3)
    return stats


def caption_directory_ray(images_dir: str | Path, out_path: str | Path, checkpoint_path: str | Path,
                          cfg: CaptionConfig, progress: Callable[[int, int], None] | None = None,
                          allow_encoder_mismatch: bool = False, options: RayOptions | None = None) -> dict:
    """caption_directory on Ray: same arguments, rows and summary (plus `engine` and `ray`:
    start-up seconds, actors, device). IMAGES and OUT may be URIs (pipeline/distributed/storage.py):
    a local OUT is one Parquet file, a remote OUT a directory of parts."""
    options = options or RayOptions()
    remote_in, remote_out = storage.is_uri(images_dir), storage.is_uri(out_path)
    if not remote_in and not Path(images_dir).is_dir():
        raise CaptionUsageError(f"{images_dir}: no such directory; pass the folder of images to caption")
    out = storage.staging_file(str(out_path)) if remote_out else Path(out_path)
    if out.is_dir():
        raise CaptionUsageError(f"{out} is a directory; give a file name such as captions.parquet")
    started = time.time()
    checkpoint = load_checkpoint(checkpoint_path)  # here, not on a worker: a wrong path is a usage error
    preprocess = Preprocess.from_dict(checkpoint["encoder"]["preprocess"])
    language = resolve_language(cfg.language or None, checkpoint_languages(checkpoint))  # here too: a usage error
    kwargs = dict(beam_size=cfg.beam_size, max_len=cfg.max_len, length_penalty=cfg.length_penalty,
                  no_repeat_ngram=cfg.no_repeat_ngram,
                  allow_encoder_mismatch=allow_encoder_mismatch, runtime=cfg.runtime, language=language)
    parts_dir = parts_dir_for(out)
    lock, finished = lock_parts_dir(parts_dir), False
    try:
        with ray_session(options.address) as init_seconds:
            ray = require_ray()
            plan = plan_actors(cfg.device, cfg.threads, options)
            kwargs["device"] = plan.device
            probe_started, reference = time.time(), ray.put(checkpoint)
            try:
                identity = ray.get(ray.remote(_probe_identity).options(**plan.remote_args())
                                   .remote(reference, kwargs, plan.threads))
            except ray.exceptions.RayTaskError as err:
                raise unwrap(err) from None
            probe_seconds = time.time() - probe_started
            fs, unlisted = None, {}
            if remote_in:
                fs, files = storage.list_remote(str(images_dir), cfg.patterns, cfg.recursive)
            else:
                files = list(list_images(Path(images_dir), cfg.patterns, cfg.recursive, exclude=[out, parts_dir],
                                         unlisted=unlisted))
            if not files:
                logger.warning("no file under %s matches %s", images_dir, " ".join(cfg.patterns))
            if remote_out and not out.exists() and not part_files(parts_dir):
                storage.download_parts(str(out_path), parts_dir)
            parts = part_files(parts_dir)
            previous = previous_rows(row_sources(out, parts), *identity)
            next_seq = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0
            actor_args = {"checkpoint": [reference], "kwargs": kwargs, "identity": identity, "threads": plan.threads}
            writer = PartWriter(parts_dir, next_seq, cfg.part_size)
            stats = _caption_files(ray, files, fs, preprocess, actor_args, plan, options, cfg, previous, writer,
                                   progress) if files else {"captioned": 0, "errors": 0, "caption_seconds": 0.0,
                                                            "first_rows_seconds": 0.0, **dict.fromkeys(REASONS, 0),
                                                            "cut_at_max_len": 0}
        del previous
        tmp = parts_dir / "merged.parquet.tmp"
        keep = unlisted_keeper(Path(images_dir), list(unlisted.values())) if unlisted else None
        counts = merge_rows(row_sources(out, part_files(parts_dir)), {(f.key, f.escaped) for f in files}, tmp, keep)
        replace_atomically(tmp, out)
        finished = True
    finally:
        if finished or not any(parts_dir.glob("part-*")):  # keep the parts of an unfinished run
            shutil.rmtree(parts_dir, ignore_errors=True)
        lock.close()
    if remote_out:
        storage.upload(out, str(out_path))
        out.unlink()  # the next run starts from OUT's parts, whoever wrote them since
    seconds = time.time() - started
    caption_seconds, first_rows = stats.pop("caption_seconds"), stats.pop("first_rows_seconds")
    summary = {"listed": len(files), **stats, "rows": counts["ok"] + counts["error"], "failed": counts["error"],
               "kept_unlisted": counts["kept_unlisted"], "listing_incomplete": bool(unlisted),
               "unlisted_dirs": list(unlisted), "seconds": round(seconds, 3), "out": str(out_path),
               "model_id": identity[0], "settings": json.loads(identity[1]), "language": language, "engine": "ray",
               "images_per_second": round(stats["captioned"] / max(caption_seconds, 1e-9), 2),
               "ray": {"init_seconds": round(init_seconds, 3), "identity_seconds": round(probe_seconds, 3),
                       "caption_seconds": round(caption_seconds, 3),
                       "first_rows_seconds": first_rows, "device": plan.device, "actors": plan.actors,
                       "actor_cpus": plan.actor_cpus, "threads": plan.threads}}
    logger.info("caption-batch (ray): %d listed: %d reused, %d new, %d re-captioned (model or settings changed), "
                "%d re-captioned (file changed), %d retried (error before); %d captioned, %d failed -> %s "
                "(%.1fs, %.1f images/s; Ray start %.1fs, model identity %.1fs)", summary["listed"],
                *(summary[r] for r in REASONS), summary["captioned"], summary["failed"], out_path, seconds,
                summary["images_per_second"], init_seconds, probe_seconds)
    warn_cut_captions(summary["cut_at_max_len"], summary["captioned"], cfg.max_len,
                      (checkpoint.get("config") or {}).get("max_len"))
    if unlisted:
        logger.error("caption-batch: listing incomplete, could not list %s; their earlier rows (%d) are kept; "
                     "rerun once they are readable", ", ".join(unlisted), counts["kept_unlisted"])
    return summary

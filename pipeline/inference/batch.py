"""caption-batch engine: caption every image under a directory into one Parquet file.

Built for folders of millions of photos, some broken:
- worker processes read, hash and decode files while the model runs the previous batch;
- a file that cannot be decoded becomes an error row, never an exception;
- rows go to small part files (atomic renames) in a hidden work dir beside OUT, so memory
  stays flat and a killed run loses at most one part's worth of work;
- each row names what made it: model_id and `settings` (decoding settings, precision); a rerun
  reuses an ok row (in OUT or in the parts a killed run left) only when path, sha256 of the
  bytes, model_id and settings all match, and captions every other file again; error rows
  are always retried;
- at the end, OUT, old parts and new parts are merged (last row per path wins, paths no
  longer listed are dropped) into a temp file that atomically replaces OUT. A directory that
  could not be listed is not taken as "its files are gone": the rows under it are kept unless
  the file is provably absent, and the summary says the listing was incomplete.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from pipeline.data.images import ImageBatch, ImageDataset, collate_images, read_ahead
from pipeline.encoders.runtimes import check_runtime_name, default_threads, default_workers
from pipeline.hashing import file_sha256
from pipeline.inference.caption_store import (CaptionUsageError, Key, PartWriter, Previous, lock_parts_dir, merge_rows,
                                              part_files, parts_dir_for, previous_rows, replace_atomically, row_sources,
                                              settings_json, unlisted_keeper)
from pipeline.inference.captioner import Captioner
from pipeline.inference.listing import DEFAULT_PATTERNS, ImageFile, list_images

logger = logging.getLogger(__name__)

# Exit status of caption-batch and of the caption stage when some directory could not be listed
# (OUT is still written, keeping the earlier rows under it): rerun once it is readable.
EXIT_LISTING_INCOMPLETE = 4
# Why each listed file was reused or captioned again; the summary counts each.
REASONS = ("reused", "new", "recaptioned_settings", "recaptioned_content", "retried")


@dataclass
class CaptionConfig:
    images_dir: str = ""  # used by the DVC stage; the CLI takes the directory as an argument
    batch_size: int = 32
    num_workers: int = field(default_factory=default_workers)  # decoding processes; 0 = in this process
    threads: int = 0  # model threads; 0 = every core (measured best beside the workers: README Performance)
    device: str = "auto"  # auto | cpu | cuda
    runtime: str = "auto"  # encoder runtime: auto | torch | openvino | onnxruntime (pipeline/encoders/runtimes.py)
    beam_size: int = 3  # 1 = greedy
    max_len: int = 20
    length_penalty: float = 0.7
    no_repeat_ngram: int = 0  # n > 0: no caption repeats n words (4 with beam search: README, Decoders); 0 = off
    recursive: bool = True
    patterns: list[str] = field(default_factory=lambda: list(DEFAULT_PATTERNS))  # case-insensitive globs on names
    part_size: int = 512  # rows per part file: the most work a killed run can lose
    # Read and encode batch k+1 in a thread while batch k is beam-searched (true), or one after
    # the other (false); auto = overlap_for(device) (README: Performance).
    overlap: bool | str = "auto"
    # Caption language: one the model was trained on ('' = its first, English when it has it).
    language: str = ""

    def __post_init__(self) -> None:
        for name in ("batch_size", "beam_size", "max_len", "part_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"caption.{name} must be at least 1, got {getattr(self, name)}")
        if self.num_workers < 0 or self.threads < 0 or self.no_repeat_ngram < 0:
            raise ValueError("caption.num_workers, caption.threads and caption.no_repeat_ngram must be >= 0")
        check_runtime_name(self.runtime, "caption.runtime")
        if self.overlap not in (True, False, "auto"):
            raise ValueError(f"caption.overlap {self.overlap!r}: use true, false or auto")
        if not self.patterns:
            raise ValueError("caption.patterns is empty: give at least one glob such as '*.jpg'")


# --- decoding in workers --------------------------------------------------------------------

def sha256_file(path: Path) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None  # the decoder then reports why the file cannot be read


class _CaptionDataset(ImageDataset):
    """ImageDataset that also hashes each file and does not decode files whose row is reused.
    Items: (index, tensor | None, error | None, size | None, sha256 | None, reason)."""

    def __init__(self, files: Sequence[ImageFile], preprocess, previous: dict[Key, Previous]):
        super().__init__([f.path for f in files], preprocess)
        self.files, self.previous = files, previous

    def _reason(self, key: Key, digest: str | None) -> str:
        prev = self.previous.get(key)
        if prev is None:
            return "new"
        if prev.content_hash is None:
            return "retried"  # its latest row is an error
        if digest != prev.content_hash:
            return "recaptioned_content"
        return "reused" if prev.same_identity else "recaptioned_settings"

    def __getitem__(self, index: int):
        file = self.files[index]
        key = (file.key, file.escaped)
        if file.problem:
            return index, None, file.problem, None, None, self._reason(key, None)
        digest = sha256_file(file.path)
        reason = self._reason(key, digest)
        if reason == "reused":
            return index, None, None, None, digest, reason
        return (*super().__getitem__(index), digest, reason)


@dataclass
class _Batch:
    images: ImageBatch  # the files that were decoded or failed
    hashes: dict[int, str | None]
    reasons: dict[int, str]


def _collate(items: list[tuple]) -> _Batch:
    return _Batch(collate_images([item[:4] for item in items if item[5] != "reused"]),
                  {item[0]: item[4] for item in items}, {item[0]: item[5] for item in items})


# --- the run -----------------------------------------------------------------------------------

def _row(file: ImageFile, identity: tuple[str, str], digest: str | None, *, caption: str | None = None,
         confidence: float | None = None, error: str | None = None,
         size: tuple[int, int] | None = None, language: str | None = None) -> dict:
    """identity: (model_id, settings JSON) of this run; language: the one it captions in."""
    return {"path": file.key, "path_escaped": file.escaped, "caption": caption, "language": language,
            "mean_logprob": confidence,
            "status": "error" if error else "ok", "error": error, "width": size[0] if size else None,
            "height": size[1] if size else None, "content_hash": digest, "model_id": identity[0],
            "settings": identity[1]}


def caption_directory(images_dir: str | Path, out_path: str | Path, checkpoint_path: str | Path,
                      cfg: CaptionConfig, progress: Callable[[int, int], None] | None = None,
                      allow_encoder_mismatch: bool = False) -> dict:
    """Caption the images under `images_dir` into the Parquet file `out_path` (resuming when it
    or a killed run's parts exist). progress(done, total) is called after every batch.
    Returns a summary: listed; why files were reused or captioned again (REASONS); captioned
    (ok captions made), errors (error rows made), failed (error rows in OUT), rows,
    kept_unlisted; listing_incomplete and unlisted_dirs; model_id, settings, seconds, images/s."""
    images_dir, out = Path(images_dir), Path(out_path)
    if not images_dir.is_dir():
        raise CaptionUsageError(f"{images_dir}: no such directory; pass the folder of images to caption")
    if out.is_dir():
        raise CaptionUsageError(f"{out} is a directory; give a file name such as captions.parquet")
    started = time.time()
    parts_dir = parts_dir_for(out)
    lock, finished = lock_parts_dir(parts_dir), False
    try:
        threads = cfg.threads or default_threads()
        torch.set_num_threads(threads)
        captioner = Captioner.from_checkpoint(checkpoint_path, device=cfg.device, beam_size=cfg.beam_size,
                                              max_len=cfg.max_len, length_penalty=cfg.length_penalty,
                                              no_repeat_ngram=cfg.no_repeat_ngram,
                                              allow_encoder_mismatch=allow_encoder_mismatch,
                                              runtime=cfg.runtime, threads=threads, language=cfg.language or None)
        identity = (captioner.model_id, settings_json(captioner.settings))
        unlisted: dict[str, str] = {}
        files = list(list_images(images_dir, cfg.patterns, cfg.recursive, exclude=[out, parts_dir],
                                 unlisted=unlisted))
        if not files:
            logger.warning("no file under %s matches %s", images_dir, " ".join(cfg.patterns))
        parts = part_files(parts_dir)
        previous = previous_rows(row_sources(out, parts), *identity)
        next_seq = int(parts[-1].stem.split("-")[1]) + 1 if parts else 0
        stats = _caption_files(files, captioner, identity, cfg, previous,
                               PartWriter(parts_dir, next_seq, cfg.part_size), progress)
        del previous
        tmp = parts_dir / "merged.parquet.tmp"
        keep = unlisted_keeper(images_dir, list(unlisted.values())) if unlisted else None
        counts = merge_rows(row_sources(out, part_files(parts_dir)), {(f.key, f.escaped) for f in files}, tmp,
                            keep)
        replace_atomically(tmp, out)
        finished = True
    finally:
        if finished or not any(parts_dir.glob("part-*")):  # keep the parts of an unfinished run
            shutil.rmtree(parts_dir, ignore_errors=True)  # still locked: no other run is using it
        lock.close()
    seconds = time.time() - started
    summary = {"listed": len(files), **stats, "rows": counts["ok"] + counts["error"],
               "failed": counts["error"], "kept_unlisted": counts["kept_unlisted"],
               "listing_incomplete": bool(unlisted), "unlisted_dirs": list(unlisted),
               "seconds": round(seconds, 3), "out": str(out), "model_id": captioner.model_id,
               "settings": captioner.settings, "language": captioner.language,
               "cut_at_max_len": captioner.cut_captions,
               "images_per_second": round(stats["captioned"] / max(stats["caption_seconds"], 1e-9), 2)}
    logger.info("caption-batch: %d listed: %d reused, %d new, %d re-captioned (model or settings changed), "
                "%d re-captioned (file changed), %d retried (error before); %d captioned, %d failed "
                "-> %s (%.1fs, %.1f images/s)", summary["listed"], *(summary[r] for r in REASONS),
                summary["captioned"], summary["failed"], out, seconds, summary["images_per_second"])
    warn_cut_captions(captioner.cut_captions, stats["captioned"], captioner.max_len, captioner.trained_max_len)
    if unlisted:
        logger.error("caption-batch: listing incomplete, %d director%s could not be listed: %s; their "
                     "earlier rows (%d) are kept; rerun once they are readable", len(unlisted),
                     "y" if len(unlisted) == 1 else "ies", ", ".join(unlisted), counts["kept_unlisted"])
    return summary


def warn_cut_captions(cut: int, captioned: int, max_len: int, trained_max_len: int | None) -> None:
    """The warning of both engines when max_len cut some captions (summary: cut_at_max_len)."""
    if cut:
        logger.warning("caption-batch: %d of %d captions reached max_len=%d tokens before ending and are cut: "
                       "rerun with a larger --max-len (caption.max_len); the model was trained with "
                       "train.max_len=%s", cut, captioned, max_len, trained_max_len or "unknown")


def overlap_for(device: torch.device) -> bool:
    """caption.overlap: auto. On a CPU encoding and beam search both need every core: on 2 cores
    running them side by side was slower than one after the other in 11 of 11 interleaved pairs
    of runs (median 83.8 against 87.5 and 66 against 77 images/s; README: Performance). On a GPU
    the encoder's work is on the device, and the thread mostly waits for it and for the files:
    overlap there (a rule of thumb, not measured)."""
    return device.type != "cpu"


def _encoded_batches(loader: DataLoader, captioner: Captioner, overlap: bool) -> Iterator[tuple[_Batch, torch.Tensor | None]]:
    """(batch, its features) in order. With overlap, the next batch is read and encoded in a
    second thread while the caller decodes this one (read_ahead: one batch ahead at most, so
    memory stays flat and an interruption loses no finished row: the caller writes as it goes)."""
    def read_and_encode(batch: _Batch) -> tuple[_Batch, torch.Tensor | None]:
        images = batch.images.images
        return batch, (captioner.encode(images) if images is not None else None)

    return read_ahead(loader, read_and_encode) if overlap else map(read_and_encode, loader)


def _caption_files(files: list[ImageFile], captioner: Captioner, identity: tuple[str, str], cfg: CaptionConfig,
                   previous: dict[Key, Previous], writer: PartWriter,
                   progress: Callable[[int, int], None] | None) -> dict:
    loader = DataLoader(_CaptionDataset(files, captioner.preprocess, previous), batch_size=cfg.batch_size,
                        shuffle=False, num_workers=cfg.num_workers, collate_fn=_collate,
                        pin_memory=captioner.device.type == "cuda")
    overlap = overlap_for(captioner.device) if cfg.overlap == "auto" else cfg.overlap
    stats = {"captioned": 0, "errors": 0, **{reason: 0 for reason in REASONS}, "overlap": overlap}
    seen, started, last_log = 0, time.time(), time.time()
    try:
        for batch, features in _encoded_batches(loader, captioner, overlap):
            b = batch.images
            for index, error in b.failures:
                writer.add(_row(files[index], identity, batch.hashes[index], error=error,
                                language=captioner.language))
            if features is not None:
                captions, confidence = captioner.caption_features(features)
                for index, caption, conf, size in zip(b.indices, captions, confidence, b.sizes):
                    writer.add(_row(files[index], identity, batch.hashes[index],
                                    caption=caption, confidence=conf, size=size, language=captioner.language))
            stats["captioned"] += len(b.indices)
            stats["errors"] += len(b.failures)
            for reason in batch.reasons.values():
                stats[reason] += 1
            seen += len(batch.hashes)
            if progress:
                progress(seen, len(files))
            elif time.time() - last_log > 30:
                last_log = time.time()
                logger.info("caption-batch: %d/%d files", seen, len(files))
    finally:
        writer.flush()  # interrupted or not, finished rows reach a part file
    stats["caption_seconds"] = time.time() - started
    return stats

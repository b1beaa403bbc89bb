"""caption_directory: schema, listing, every kind of bad input as an error row, resume."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline.encoders.runtimes import runtime_candidates
from pipeline.inference.batch import CaptionConfig, CaptionUsageError, caption_directory
from pipeline.inference.listing import list_images
from pipeline.inference.caption_store import SCHEMA, parts_dir_for
from pipeline.inference.captioner import Captioner
from test_captioner import make_checkpoint, make_image

CFG = dict(batch_size=4, num_workers=0, threads=1, beam_size=2, max_len=5, part_size=3)
AUTO = runtime_candidates("auto", torch.device("cpu"), "fp32")[0]  # what runtime auto runs the encoder on


@pytest.fixture(scope="module", autouse=True)
def restore_threads():
    threads = torch.get_num_threads()  # cfg.threads=1 sets it process-wide
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")


def read(out: Path) -> dict[str, dict]:
    rows = pq.read_table(out).to_pylist()
    by_path = {r["path"]: r for r in rows}
    assert len(by_path) == len(rows), "duplicate paths"
    return by_path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_schema_rows_and_listing(checkpoint, tmp_path):
    images = tmp_path / "images"
    make_image(images / "a.jpg", 0, size=(40, 32))
    make_image(images / "B.PNG", 1, size=(30, 20))  # extensions match case-insensitively
    make_image(images / "sub" / "deeper" / "c.webp", 2)
    (images / "notes.txt").write_text("not listed")
    os.symlink(images / "sub", images / "linked_dir")  # not followed: no duplicate rows
    out = tmp_path / "out" / "captions.parquet"
    summary = caption_directory(images, out, checkpoint, CaptionConfig(**{**CFG, "num_workers": 1}))
    table = pq.read_table(out)
    assert table.schema.equals(SCHEMA, check_metadata=False)
    rows = read(out)
    assert set(rows) == {"a.jpg", "B.PNG", "sub/deeper/c.webp"}
    assert (rows["a.jpg"]["width"], rows["a.jpg"]["height"]) == (40, 32)
    assert (rows["B.PNG"]["width"], rows["B.PNG"]["height"]) == (30, 20)
    model_id = Captioner.from_checkpoint(checkpoint).model_id
    for path, row in rows.items():
        assert row["status"] == "ok" and row["error"] is None and row["caption"]
        assert row["mean_logprob"] < 0
        assert row["content_hash"] == sha256(images / path)
        assert row["model_id"] == model_id and row["path_escaped"] is False
        assert json.loads(row["settings"]) == {"beam_size": 2, "max_len": 5, "length_penalty": 0.7, "precision": "fp32",
                                               "runtime": AUTO}
    assert summary["captioned"] == 3 and summary["failed"] == 0 and summary["reused"] == 0
    assert summary["new"] == 3 and summary["listing_incomplete"] is False
    assert not parts_dir_for(out).exists()  # work dir removed once OUT holds every row

    flat = [f.key for f in list_images(images, ["*.jpg", "*.png", "*.webp"], recursive=False)]
    assert flat == ["B.PNG", "a.jpg"]


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height but holds no pixel data: tiny on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_bad_inputs_become_error_rows_and_odd_modes_caption(checkpoint, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "empty.jpg").write_bytes(b"")
    full = make_image(images / "whole.jpg", 3).read_bytes()
    (images / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (images / "text.png").write_text("this is not a picture")
    png_header(images / "huge.png", 40000, 40000)
    os.symlink(images / "gone.jpg", images / "broken.jpg")
    os.mkfifo(images / "pipe.jpg")  # opening it would block forever
    make_image(images / "cmyk.jpg", 4, mode="CMYK")
    make_image(images / "gray.png", 5, mode="L")
    Image.fromarray((np.arange(40 * 48, dtype=np.uint16).reshape(40, 48) * 30)).save(images / "deep16.png")
    palette = Image.open(make_image(tmp_path / "src.png", 6)).convert("P")
    palette.save(images / "palette_alpha.png", transparency=0)
    name = os.fsencode(str(images)) + b"/caf\xe9.jpg"  # Latin-1 name: not valid UTF-8
    with open(name, "wb") as f:
        f.write(full)
    out = tmp_path / "out.parquet"
    summary = caption_directory(images, out, checkpoint, CaptionConfig(**CFG))
    rows = read(out)
    errors = {p: r["error"] for p, r in rows.items() if r["status"] == "error"}
    assert set(errors) == {"empty.jpg", "truncated.jpg", "text.png", "huge.png", "broken.jpg", "pipe.jpg"}
    assert "empty" in errors["empty.jpg"]
    assert "not an image" in errors["text.png"]
    assert "decompression-bomb" in errors["huge.png"]
    assert "symlink" in errors["broken.jpg"]
    assert "regular file" in errors["pipe.jpg"]
    assert all(rows[p]["caption"] is None and rows[p]["width"] is None for p in errors)
    assert rows["broken.jpg"]["content_hash"] is None and rows["pipe.jpg"]["content_hash"] is None
    assert rows["empty.jpg"]["content_hash"] == hashlib.sha256(b"").hexdigest()
    for ok in ("whole.jpg", "cmyk.jpg", "gray.png", "deep16.png", "palette_alpha.png", "caf\\xe9.jpg"):
        assert rows[ok]["status"] == "ok" and rows[ok]["caption"], ok
    assert rows["caf\\xe9.jpg"]["path_escaped"] is True
    assert rows["caf\\xe9.jpg"]["content_hash"] == hashlib.sha256(full).hexdigest()
    assert summary["failed"] == 6 and summary["captioned"] == 6


@contextlib.contextmanager
def unprivileged():
    """Root reads chmod-000 files anyway; act as `nobody` meanwhile (real uid stays root)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_unreadable_file_is_an_error_row(checkpoint):
    with tempfile.TemporaryDirectory() as base:  # tmp_path's parents are private to root
        root = Path(base)
        root.chmod(0o777)
        images = root / "images"
        make_image(images / "fine.png", 7)
        make_image(images / "secret.png", 8).chmod(0o000)
        images.chmod(0o755)
        model = root / "model.pt"
        model.write_bytes(checkpoint.read_bytes())
        with unprivileged():
            summary = caption_directory(images, root / "out.parquet", model, CaptionConfig(**CFG))
        rows = read(root / "out.parquet")
    assert rows["fine.png"]["status"] == "ok"
    assert rows["secret.png"]["status"] == "error" and "permission denied" in rows["secret.png"]["error"]
    assert summary["failed"] == 1


def test_rerun_skips_captioned_files_and_recaptions_changed_ones(checkpoint, tmp_path):
    images = tmp_path / "images"
    for i in range(7):
        make_image(images / f"{i}.png", i)
    (images / "bad.png").write_bytes(b"")
    out = tmp_path / "out.parquet"
    cfg = CaptionConfig(**CFG)
    first = caption_directory(images, out, checkpoint, cfg)
    before = read(out)
    make_image(images / "3.png", 99)  # new content, same name
    make_image(images / "new.png", 100)
    (images / "5.png").unlink()
    second = caption_directory(images, out, checkpoint, cfg)
    after = read(out)
    assert (first["captioned"], first["errors"], first["failed"]) == (7, 1, 1)
    assert (second["captioned"], second["reused"], second["failed"]) == (2, 5, 1)
    assert (second["new"], second["recaptioned_content"], second["retried"]) == (1, 1, 1)  # errors are retried
    assert set(after) == {"0.png", "1.png", "2.png", "3.png", "4.png", "6.png", "new.png", "bad.png"}
    for path in ("0.png", "1.png", "2.png", "4.png", "6.png"):
        assert after[path] == before[path]
    assert after["3.png"]["content_hash"] == sha256(images / "3.png") != before["3.png"]["content_hash"]

    other_model = make_checkpoint(tmp_path / "other.pt", seed=1)
    third = caption_directory(images, out, other_model, cfg)
    assert third["reused"] == 0 and third["captioned"] == 7  # another model's captions are not reused
    assert third["recaptioned_settings"] == 7
    assert {r["model_id"] for r in read(out).values()} == {Captioner.from_checkpoint(other_model).model_id}


def test_usage_errors(checkpoint, tmp_path):
    images = tmp_path / "images"
    make_image(images / "a.png", 0)
    with pytest.raises(CaptionUsageError, match="no such directory"):
        caption_directory(tmp_path / "missing", tmp_path / "o.parquet", checkpoint, CaptionConfig(**CFG))
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), foreign)
    with pytest.raises(CaptionUsageError, match="not a caption-batch output"):
        caption_directory(images, foreign, checkpoint, CaptionConfig(**CFG))
    assert not parts_dir_for(foreign).exists()  # nothing left behind by a refused run
    with pytest.raises(ValueError, match="batch_size"):
        CaptionConfig(batch_size=0)


GREEDY_SHORT = {"beam_size": 1, "max_len": 2, "length_penalty": 0.7, "precision": "fp32", "runtime": AUTO}


def test_changed_decoding_settings_recaption_and_each_row_names_its_settings(checkpoint, tmp_path):
    images = tmp_path / "images"
    paths = [make_image(images / f"{i}.png", i) for i in range(3)]
    out = tmp_path / "out.parquet"
    caption_directory(images, out, checkpoint, CaptionConfig(**CFG))  # beam 2, up to 5 words
    assert any(len(r["caption"].split()) > 2 for r in read(out).values())  # so max_len 2 must change them
    greedy = CaptionConfig(**{**CFG, "beam_size": 1, "max_len": 2})
    summary = caption_directory(images, out, checkpoint, greedy)
    rows = read(out)
    want = Captioner.from_checkpoint(checkpoint, beam_size=1, max_len=2).caption_batch(paths)
    assert {r["path"]: r["caption"] for r in rows.values()} == {p.name: w.caption for p, w in zip(paths, want)}
    assert all(json.loads(r["settings"]) == GREEDY_SHORT for r in rows.values())
    assert (summary["reused"], summary["recaptioned_settings"], summary["new"]) == (0, 3, 0)
    again = caption_directory(images, out, checkpoint, greedy)
    assert (again["reused"], again["captioned"]) == (3, 0)
    penalty = caption_directory(images, out, checkpoint, CaptionConfig(**{**CFG, "length_penalty": 0.0}))
    assert (penalty["reused"], penalty["recaptioned_settings"]) == (0, 3)
    blocked = caption_directory(images, out, checkpoint, CaptionConfig(**{**CFG, "no_repeat_ngram": 2}))
    assert (blocked["reused"], blocked["recaptioned_settings"]) == (0, 3)
    assert all(json.loads(r["settings"])["no_repeat_ngram"] == 2 for r in read(out).values())


def test_output_of_an_older_version_is_recaptioned_not_refused(checkpoint, tmp_path):
    images = tmp_path / "images"
    for i in range(2):
        make_image(images / f"{i}.png", i)
    out = tmp_path / "out.parquet"
    caption_directory(images, out, checkpoint, CaptionConfig(**CFG))
    pq.write_table(pq.read_table(out).drop(["settings"]), out)  # rows that do not say their settings
    summary = caption_directory(images, out, checkpoint, CaptionConfig(**CFG))
    assert (summary["reused"], summary["recaptioned_settings"]) == (0, 2)
    assert pq.read_table(out).schema.equals(SCHEMA, check_metadata=False)
    assert all(r["settings"] for r in read(out).values())


def deny_listing(monkeypatch, directory: Path, times: int | None = 1) -> None:
    """os.scandir(directory) raises EACCES `times` times (None: always), as on a flaky NFS mount."""
    real, left = os.scandir, [times]

    def scandir(path="."):
        named = not isinstance(path, int) and os.fspath(path) == str(directory)  # shutil passes fds
        if named and (left[0] is None or left[0] > 0):
            if left[0] is not None:
                left[0] -= 1
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path)
    monkeypatch.setattr(os, "scandir", scandir)


def test_a_directory_that_cannot_be_listed_keeps_its_finished_rows(checkpoint, tmp_path, monkeypatch):
    images = tmp_path / "images"
    for i, name in enumerate(("a.png", "b.png", "sub/c.png", "sub/d.png", "sub/e.png")):
        make_image(images / name, i)
    out = tmp_path / "out.parquet"
    caption_directory(images, out, checkpoint, CaptionConfig(**CFG))
    before = read(out)
    (images / "b.png").unlink()  # really gone: its row goes
    (images / "sub" / "d.png").unlink()  # gone too: sub/ is listable again by the merge, so it can tell
    deny_listing(monkeypatch, images / "sub")
    summary = caption_directory(images, out, checkpoint, CaptionConfig(**CFG))
    after = read(out)
    assert set(after) == {"a.png", "sub/c.png", "sub/e.png"}
    assert after["sub/c.png"] == before["sub/c.png"] and after["a.png"] == before["a.png"]
    assert summary["listing_incomplete"] is True and summary["unlisted_dirs"] == [str(images / "sub")]
    assert (summary["kept_unlisted"], summary["rows"]) == (2, 3)

    (images / "sub" / "e.png").unlink()
    deny_listing(monkeypatch, images / "sub", times=None)  # still failing at the merge: cannot tell
    summary = caption_directory(images, out, checkpoint, CaptionConfig(**CFG))
    assert set(read(out)) == {"a.png", "sub/c.png", "sub/e.png"} and summary["kept_unlisted"] == 2


def test_overlapped_encoding_gives_the_rows_of_the_plain_loop_and_keeps_them_on_a_crash(checkpoint, tmp_path,
                                                                                        monkeypatch):
    images = tmp_path / "images"
    for i in range(11):
        make_image(images / f"{i:02d}.png", i)
    (images / "05b.png").write_bytes(b"not a png")
    plain, overlapped = tmp_path / "plain.parquet", tmp_path / "overlapped.parquet"
    caption_directory(images, plain, checkpoint, CaptionConfig(**CFG, overlap=False))
    caption_directory(images, overlapped, checkpoint, CaptionConfig(**CFG, overlap=True))
    assert read(overlapped) == read(plain)  # same captions, errors, hashes, in every field

    # Decoding of the third batch fails while the fourth is being encoded ahead: the rows of
    # the first two batches must be in part files, and a rerun reuses them.
    calls, original = [], Captioner.caption_features

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("decoder crashed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Captioner, "caption_features", failing)
    crashed = tmp_path / "crashed.parquet"
    with pytest.raises(RuntimeError, match="decoder crashed"):
        caption_directory(images, crashed, checkpoint, CaptionConfig(**CFG, overlap=True))
    monkeypatch.setattr(Captioner, "caption_features", original)
    resumed = caption_directory(images, crashed, checkpoint, CaptionConfig(**CFG, overlap=True))
    # batches of 4 in name order: the first two (7 images and the bad file) finished before the crash
    assert (resumed["reused"], resumed["retried"], resumed["captioned"]) == (7, 1, 4)
    assert read(crashed) == read(plain)


@pytest.mark.parametrize("overlap, device, threaded", [("auto", "cpu", False), ("auto", "cuda", True),
                                                       (True, "cpu", True), (False, "cuda", False)])
def test_overlap_auto_reads_ahead_on_a_gpu_only(checkpoint, tmp_path, monkeypatch, overlap, device, threaded):
    import pipeline.inference.batch as batch_module
    images = tmp_path / "images"
    for i in range(3):
        make_image(images / f"{i}.png", i)
    used = []
    monkeypatch.setattr(batch_module, "read_ahead", lambda items, work: used.append(1) or map(work, items))
    # The device only decides the policy here: the model still runs on the CPU.
    monkeypatch.setattr(batch_module, "overlap_for", lambda d, real=batch_module.overlap_for:
                        real(torch.device(device)))
    summary = caption_directory(images, tmp_path / "out.parquet", checkpoint, CaptionConfig(**CFG, overlap=overlap))
    assert bool(used) is threaded and summary["overlap"] is threaded and summary["captioned"] == 3


def test_overlap_takes_true_false_or_auto_only():
    with pytest.raises(ValueError, match="caption.overlap 'sometimes'"):
        CaptionConfig(overlap="sometimes")


def test_captions_cut_at_max_len_are_counted_and_named(checkpoint, tmp_path, caplog):
    images = tmp_path / "imgs"
    for i in range(8):
        make_image(images / f"{i}.png", seed=i)
    for max_len in (2, 40):
        out = tmp_path / f"out{max_len}.parquet"
        cfg = CaptionConfig(**{**CFG, "beam_size": 1, "max_len": max_len})
        with caplog.at_level("WARNING", logger="pipeline.inference.batch"):
            caplog.clear()
            summary = caption_directory(images, out, checkpoint, cfg)
        lengths = [len(r["caption"].split()) for r in read(out).values() if r["status"] == "ok"]
        # a caption of max_len words never had a step left for <end> (one word a token here)
        assert summary["cut_at_max_len"] == sum(n >= max_len for n in lengths)
        warned = [r.getMessage() for r in caplog.records if "before ending and are cut" in r.getMessage()]
        if summary["cut_at_max_len"]:
            assert warned and f"max_len={max_len}" in warned[0] and "--max-len" in warned[0]
        else:
            assert not warned
        if max_len == 2:
            assert 0 < summary["cut_at_max_len"], lengths  # the test fixture must produce cut captions

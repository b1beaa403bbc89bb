"""The caption-batch command: exit codes, help, and resume after SIGKILL (in real
processes: `python -m pipeline.cli`)."""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from pipeline import cli
from pipeline.inference.caption_store import parts_dir_for
from pipeline.inference.captioner import Captioner
from pipeline.cli import EXIT_SOME_FAILED, EXIT_USAGE, app
from test_batch import deny_listing
from test_captioner import make_checkpoint, make_image, replace_weights, weights_file

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--threads", "1", "--workers", "0", "--batch-size", "4", "--beam-size", "2", "--max-len", "5"]


@pytest.fixture(scope="module", autouse=True)
def restore_threads():
    threads = torch.get_num_threads()  # --threads 1 sets it process-wide
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_exit_codes_and_messages(checkpoint, tmp_path):
    images = tmp_path / "images"
    for i in range(3):
        make_image(images / f"{i}.jpg", i)
    ok = invoke(images, tmp_path / "ok.parquet", "--model", checkpoint, *FAST)
    assert ok.exit_code == 0, ok.output
    assert "3 captioned, 0 failed, 0 reused" in ok.output and "3 new" in ok.output
    assert pq.read_table(tmp_path / "ok.parquet").num_rows == 3

    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff")
    some_failed = invoke(images, tmp_path / "ok.parquet", "--model", checkpoint, *FAST)
    assert some_failed.exit_code == EXIT_SOME_FAILED == 3
    assert "0 captioned, 1 failed, 3 reused" in some_failed.output
    assert pq.read_table(tmp_path / "ok.parquet").num_rows == 4  # the failure has its row

    missing_dir = invoke(tmp_path / "nope", tmp_path / "x.parquet", "--model", checkpoint, *FAST)
    assert missing_dir.exit_code == EXIT_USAGE == 2 and "no such directory" in missing_dir.output
    no_model = invoke(images, tmp_path / "x.parquet", "--model", tmp_path / "none.pt", *FAST)
    assert no_model.exit_code == 2 and "dvc repro train" in no_model.output
    mismatch = make_checkpoint(tmp_path / "mismatch.pt", vocab_size=50)
    bad_model = invoke(images, tmp_path / "x.parquet", "--model", mismatch, *FAST)
    assert bad_model.exit_code == 2 and "vocabulary" in bad_model.output
    assert not (tmp_path / "x.parquet").exists()
    assert invoke(images, tmp_path / "x.parquet", "--beam-size", "0").exit_code == 2  # option out of range


def test_help_lists_every_option_with_its_default():
    text = invoke("--help").output
    for option, default in [("--model", "models/model.pt"), ("--device", "auto"), ("--batch-size", "32"),
                            ("--workers", "2"), ("--beam-size", "3"), ("--max-len", "20"), ("--length-penalty", "0.7"),
                            ("--allow-encoder-mismatch", "--allow-encoder-mismatch"),
                            ("--recursive", "recursive"), ("--pattern", "*.jpg")]:
        assert option in text and default in text, option
    assert "Exit codes" in text and "4 listing incomplete" in " ".join(text.split())


def slow_cli(argv: list[str]) -> None:
    """The real command in a forked child (no second interpreter start-up), slowed to ~0.3 s
    per batch so that the test can SIGKILL it mid-run after some part files exist."""
    original = Captioner.caption_features
    Captioner.caption_features = lambda self, *a, **k: (time.sleep(0.3), original(self, *a, **k))[1]
    sys.argv = ["caption-batch", *argv]
    app()


def comparable(out: Path) -> dict:
    rows = pq.read_table(out).to_pylist()
    assert len({r["path"] for r in rows}) == len(rows), "duplicate rows"
    return {r["path"]: r for r in rows}


def test_sigkilled_run_resumes_to_the_same_rows(checkpoint, tmp_path):
    images = tmp_path / "images"
    for i in range(16):
        make_image(images / f"{i:02d}.png", i)
    (images / "zero.jpg").write_bytes(b"")
    args = ["--model", checkpoint, *FAST, "--batch-size", "2", "--part-size", "2"]
    out = tmp_path / "resumed.parquet"

    argv = [str(a) for a in (images, out, *args)]
    victim = multiprocessing.get_context("fork").Process(target=slow_cli, args=(argv,))
    victim.start()
    parts, deadline = parts_dir_for(out), time.time() + 120
    while len(list(parts.glob("part-*.parquet"))) < 2:
        assert victim.is_alive(), "finished before it could be killed"
        assert time.time() < deadline, "no part files appeared"
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.join()
    assert victim.exitcode == -signal.SIGKILL
    assert not out.exists()  # never a half-written OUT
    statuses = [s for p in parts.glob("part-*.parquet") for s in pq.read_table(p).column("status").to_pylist()]
    assert 4 <= len(statuses) < 17
    ok_before_kill = statuses.count("ok")

    resumed = subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, (images, out, *args))],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    log = resumed.stdout
    assert resumed.returncode == 3, log  # zero.jpg failed
    assert f"{16 - ok_before_kill} captioned, 1 failed, {ok_before_kill} reused" in log
    assert not parts.exists()  # the work dir goes once OUT holds every row

    assert invoke(images, tmp_path / "reference.parquet", *args).exit_code == 3  # one uninterrupted run
    got, want = comparable(out), comparable(tmp_path / "reference.parquet")
    assert set(got) == set(want) and len(got) == 17
    for path, row in want.items():
        for column in ("caption", "status", "error", "width", "height", "content_hash", "model_id", "settings"):
            assert got[path][column] == row[column], (path, column)
        if row["mean_logprob"] is not None:
            assert got[path]["mean_logprob"] == pytest.approx(row["mean_logprob"], abs=1e-4)


def test_unlistable_directory_exits_4_and_keeps_its_rows(checkpoint, tmp_path, monkeypatch):
    images = tmp_path / "images"
    for i, name in enumerate(("a.jpg", "sub/b.jpg", "sub/c.jpg")):
        make_image(images / name, i)
    out = tmp_path / "out.parquet"
    assert invoke(images, out, "--model", checkpoint, *FAST).exit_code == 0
    deny_listing(monkeypatch, images / "sub")
    result = invoke(images, out, "--model", checkpoint, *FAST)
    assert result.exit_code == 4, result.output
    assert cli.EXIT_LISTING_INCOMPLETE == 4
    assert "listing incomplete" in result.output and str(images / "sub") in result.output
    assert sorted(pq.read_table(out).column("path").to_pylist()) == ["a.jpg", "sub/b.jpg", "sub/c.jpg"]


def test_encoder_mismatch_is_a_usage_error_unless_allowed(tmp_path):
    images = tmp_path / "images"
    make_image(images / "a.jpg", 0)
    weights = weights_file(tmp_path / "encoder.pt")
    model = make_checkpoint(tmp_path / "m.pt", weights=str(weights))
    replace_weights(weights)
    refused = invoke(images, tmp_path / "x.parquet", "--model", model, *FAST)
    assert refused.exit_code == EXIT_USAGE and "--allow-encoder-mismatch" in refused.output
    assert not (tmp_path / "x.parquet").exists()
    allowed = invoke(images, tmp_path / "x.parquet", "--model", model, *FAST, "--allow-encoder-mismatch")
    assert allowed.exit_code == 0, allowed.output
    row = pq.read_table(tmp_path / "x.parquet").to_pylist()[0]
    assert "+encoder-" in row["model_id"] and row["status"] == "ok"

"""The ray engine (pipeline/distributed/) on one local 2-CPU Ray cluster for the module: the
local engine's rows on a directory with a bad file in every block, resume after an interrupted
run, remote-style URIs (file://), the features stage, and the error when Ray is missing."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.distributed import storage
from pipeline.distributed.ray_cluster import (Plan, RayOptions, RayPlanError, RayUnavailableError, plan_actors,
                                              require_ray)
from pipeline.distributed.ray_engine import caption_directory_ray
from pipeline.distributed.ray_features import extract_features_ray
from pipeline.encoders import EncoderConfig
from pipeline.features import FeaturesConfig, extract_features
from pipeline.inference.batch import CaptionConfig, caption_directory
from pipeline.inference.listing import list_images
from pipeline.inference.caption_store import SCHEMA, parts_dir_for
from pipeline.cli import EXIT_SOME_FAILED, EXIT_USAGE, app
from test_captioner import make_checkpoint, make_image

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("single_thread")]

# Blocks of 2 files (a block is one batch), parts of 2 rows: several of each on a few images.
# The torch runtime: each Ray run builds the model twice (identity probe, actor), and an exported
# runtime's compile and check would double the module's time (runtimes: test_runtimes.py; the
# features test below runs the default one on Ray).
CFG = dict(batch_size=2, num_workers=0, threads=1, beam_size=2, max_len=5, part_size=2, runtime="torch")


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e '.[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")


def mixed_directory(images: Path) -> list[str]:
    """Listed in this order, so every block of two files holds one good and one bad file.
    Returns the bad ones."""
    full = make_image(images / "0_good.jpg", 0).read_bytes()
    (images / "0_zero.jpg").write_bytes(b"")
    make_image(images / "1_good.png", 1, size=(30, 20))
    (images / "1_text.jpg").write_text("not a picture, named like one")
    (images / "2_truncated.jpg").write_bytes(full[: len(full) // 2])
    make_image(images / "2_z_cmyk.jpg", 2, mode="CMYK")
    make_image(images / "sub" / "3_gray.png", 3, mode="L")
    (images / "sub" / "3_zero.png").write_bytes(b"")
    return ["0_zero.jpg", "1_text.jpg", "2_truncated.jpg", "sub/3_zero.png"]


def by_path(out) -> dict[str, dict]:
    return {r["path"]: r for r in pq.read_table(out).to_pylist()}


@pytest.fixture(scope="module")
def mixed(ray_cluster, checkpoint, tmp_path_factory):
    """One directory captioned by the local engine (API) and the ray engine (CLI)."""
    root = tmp_path_factory.mktemp("mixed")
    bad = mixed_directory(root / "images")
    local = caption_directory(root / "images", root / "local.parquet", checkpoint, CaptionConfig(**CFG))
    result = CliRunner().invoke(app, [str(root / "images"), str(root / "ray.parquet"), "--model", str(checkpoint),
                                      "--engine", "ray", "--threads", "1", "--batch-size", "2", "--beam-size", "2",
                                      "--max-len", "5", "--part-size", "2", "--runtime", "torch"],
                                catch_exceptions=False)
    return root, bad, local, result


def test_ray_rows_equal_the_local_engine_rows(mixed):
    root, bad, local, result = mixed
    assert result.exit_code == EXIT_SOME_FAILED, result.output  # as the local engine: some files failed
    assert pq.read_table(root / "ray.parquet").schema.equals(SCHEMA, check_metadata=False)
    ray_rows, local_rows = by_path(root / "ray.parquet"), by_path(root / "local.parquet")
    assert ray_rows == local_rows  # every column: captions, confidences, errors, sizes, hashes, identity
    assert {p for p, r in ray_rows.items() if r["status"] == "error"} == set(bad)
    assert [r["path"] for r in pq.read_table(root / "ray.parquet").to_pylist()] == \
        [r["path"] for r in pq.read_table(root / "local.parquet").to_pylist()]  # and in the same order
    assert (local["captioned"], local["failed"]) == (4, 4)


def test_a_bad_file_in_every_block_still_yields_all_good_rows(mixed):
    root, bad, _, result = mixed
    keys = [f.key for f in list_images(root / "images", CaptionConfig().patterns)]
    blocks = [keys[i:i + CFG["batch_size"]] for i in range(0, len(keys), CFG["batch_size"])]
    assert len(blocks) == 4 and all(any(k in bad for k in block) for block in blocks)
    rows = by_path(root / "ray.parquet")
    assert set(rows) == set(keys)
    for key in set(keys) - set(bad):
        assert rows[key]["status"] == "ok" and rows[key]["caption"] and rows[key]["width"], key
    assert "empty file" in rows["0_zero.jpg"]["error"] and "not an image" in rows["1_text.jpg"]["error"]
    assert "truncated" in rows["2_truncated.jpg"]["error"].lower()
    assert "4 file(s) could not be captioned" in result.output


class Interrupt(KeyboardInterrupt):
    """Raised by the progress callback: the driver stops as on Ctrl-C."""


def test_resume_after_an_interrupted_ray_run(ray_cluster, checkpoint, tmp_path):
    images = tmp_path / "images"
    for i in range(7):
        make_image(images / f"{i}.png", 10 + i)
    (images / "bad.png").write_bytes(b"")
    out = tmp_path / "out.parquet"

    def stop_after_first_rows(done: int, total: int) -> None:
        raise Interrupt
    with pytest.raises(Interrupt):
        caption_directory_ray(images, out, checkpoint, CaptionConfig(**CFG), progress=stop_after_first_rows)
    assert not out.exists()
    kept = pq.read_table(list(parts_dir_for(out).glob("part-*.parquet"))).to_pylist()
    assert kept and len(kept) < 8  # the first rows reached a part file, not all of them

    summary = caption_directory_ray(images, out, checkpoint, CaptionConfig(**CFG))
    kept_ok = {r["path"] for r in kept if r["status"] == "ok"}
    assert summary["reused"] == len(kept_ok) and summary["new"] == 8 - len(kept)
    assert summary["captioned"] == 7 - len(kept_ok) and summary["failed"] == 1
    # Captions cut at max_len are counted as the local engine counts them: those this run made,
    # not the reused ones nor the error row (this checkpoint never ends a caption: all are cut).
    lengths = [len(r["caption"].split()) for p, r in by_path(out).items() if r["status"] == "ok" and p not in kept_ok]
    assert summary["cut_at_max_len"] == sum(n >= CFG["max_len"] for n in lengths) > 0  # one word a token here
    assert not parts_dir_for(out).exists()
    caption_directory(images, tmp_path / "local.parquet", checkpoint, CaptionConfig(**CFG))
    assert by_path(out) == by_path(tmp_path / "local.parquet")


def test_uris_read_remote_images_and_write_a_directory_of_parts(ray_cluster, checkpoint, tmp_path):
    bad = mixed_directory(tmp_path / "images")
    out_uri = (tmp_path / "out").as_uri()  # file://: the pyarrow.fs code path that s3:// and gs:// take
    summary = caption_directory_ray((tmp_path / "images").as_uri(), out_uri, checkpoint, CaptionConfig(**CFG))
    parts = sorted((tmp_path / "out").glob("part-*.parquet"))
    assert len(parts) == 1 and summary["out"] == out_uri
    caption_directory(tmp_path / "images", tmp_path / "local.parquet", checkpoint, CaptionConfig(**CFG))
    assert by_path(tmp_path / "out") == by_path(tmp_path / "local.parquet")  # same rows, hashes of the bytes
    assert {p for p, r in by_path(tmp_path / "out").items() if r["status"] == "error"} == set(bad)
    # The next run starts from OUT's parts (downloaded as a killed run's parts) and replaces them.
    (tmp_path / "staging").mkdir()
    assert storage.download_parts(out_uri, tmp_path / "staging") == 1
    assert by_path(tmp_path / "staging" / "part-00000000.parquet") == by_path(tmp_path / "out")
    storage.upload(tmp_path / "staging" / "part-00000000.parquet", out_uri)
    assert len(list((tmp_path / "out").glob("part-*.parquet"))) == 1
    assert by_path(tmp_path / "out") == by_path(tmp_path / "local.parquet")


def test_features_stage_on_ray_writes_the_local_file(ray_cluster, tmp_path):
    (tmp_path / "img").mkdir()
    items = []
    for i in range(5):
        path = tmp_path / "img" / f"{i}.jpg"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
        items.append((f"im{i}", path))
    (tmp_path / "img" / "copy.jpg").write_bytes(items[0][1].read_bytes())  # same content: one key, two ids
    (tmp_path / "img" / "text.jpg").write_text("not a picture")
    items += [("copy", tmp_path / "img" / "copy.jpg"), ("text", tmp_path / "img" / "text.jpg")]
    encoder = EncoderConfig("efficientnet_lite0", "none")
    cfg = dict(batch_size=2, num_workers=0, device="cpu", spatial="s16", threads=1)
    local = extract_features(items, encoder, FeaturesConfig(**cfg), tmp_path / "local.parquet", tmp_path / "le.json")
    with pytest.raises(ValueError, match="extract_features_ray"):  # the library knows no engine itself
        extract_features(items, encoder, FeaturesConfig(**cfg, engine="ray"), tmp_path / "x.parquet", tmp_path / "x")
    ray = extract_features_ray(items, encoder, FeaturesConfig(**cfg, engine="ray"), tmp_path / "ray.parquet",
                               tmp_path / "re.json")
    assert pq.read_table(tmp_path / "ray.parquet").equals(pq.read_table(tmp_path / "local.parquet"))
    assert pq.read_schema(tmp_path / "ray.parquet").metadata == pq.read_schema(tmp_path / "local.parquet").metadata
    assert json.loads((tmp_path / "re.json").read_text()) == json.loads((tmp_path / "le.json").read_text())
    assert (ray["n_encoded"], ray["n_rows"], ray["n_failed"]) == (local["n_encoded"], 6, 1) == (5, 6, 1)


def test_actor_plan_keeps_a_cpu_for_decoding(ray_cluster):
    plan = plan_actors("auto", 0, RayOptions())
    assert plan == Plan("cpu", actors=1, actor_cpus=1.0, actor_gpus=0.0, threads=2)  # 2 CPUs: 1 model, 1 decoding
    assert plan_actors("cpu", 1, RayOptions(actors=2)).actor_cpus == 0.5  # two actors share the one CPU left
    with pytest.raises(RayPlanError, match="no GPU"):
        plan_actors("cuda", 0, RayOptions())
    with pytest.raises(RayPlanError, match="hangs"):
        plan_actors("cpu", 0, RayOptions(read_cpus=2))  # nothing left for the model: refused, not a hang


def test_without_ray_the_error_names_the_install_command(monkeypatch, checkpoint, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as if not installed
    with pytest.raises(RayUnavailableError, match=r"pip install -e '\.\[ray\]'"):
        require_ray()
    make_image(tmp_path / "images" / "a.png", 0)
    result = CliRunner().invoke(app, [str(tmp_path / "images"), str(tmp_path / "o.parquet"), "--model",
                                      str(checkpoint), "--engine", "ray"])
    assert result.exit_code == EXIT_USAGE and "pip install -e '.[ray]'" in result.output
    with pytest.raises(ValueError, match="features.engine"):
        FeaturesConfig(engine="spark")
    local_with_ray_option = CliRunner().invoke(app, [str(tmp_path / "images"), str(tmp_path / "o.parquet"),
                                                     "--model", str(checkpoint), "--address", "auto"])
    assert local_with_ray_option.exit_code == EXIT_USAGE and "--engine ray" in local_with_ray_option.output

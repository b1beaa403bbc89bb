"""The manifest contract and the rules build_manifest applies to every source
(exercised through the generic jsonl format, with files generated here)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import build
from pipeline.data.formats import DataConfig
from pipeline.data.manifest import (
    ManifestError,
    UnsafePathError,
    build_manifest,
    normalize_relpath,
    read_manifest,
    safe_join,
    validate_manifest,
    write_manifest,
)


def write_jsonl(root: Path, items: list[dict], images: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "captions.jsonl").write_text("\n".join(json.dumps(item) for item in items) + "\n")
    if images:
        for item in items:
            path = root / item["image"]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4), (200, 30, 30)).save(path)
    return root


def many_images(n: int) -> list[dict]:
    return [{"image": f"images/{i:05d}.png", "captions": [f"caption {i}"], "split": None} for i in range(n)]


def splits_of(df: pd.DataFrame) -> dict[str, str]:
    return dict(zip(df["image_id"], df["split"]))


# --- paths -------------------------------------------------------------------------


def test_normalize_relpath_cleans_harmless_variants():
    assert normalize_relpath("./images//a.png") == "images/a.png"
    assert normalize_relpath(" images\\sub\\a.png ") == "images/sub/a.png"


@pytest.mark.parametrize(
    "bad", ["/etc/passwd", "../secret.png", "images/../../secret.png", "C:\\data\\a.png", "", "."]
)
def test_safe_join_rejects_paths_leaving_the_root(tmp_path, bad):
    with pytest.raises(UnsafePathError):
        safe_join(tmp_path, bad)


def test_safe_join_follows_symlinks_but_only_inside_the_root(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside.png"
    (root / "images").mkdir(parents=True)
    outside.write_bytes(b"x")
    (root / "images" / "real.png").write_bytes(b"x")
    (root / "images" / "alias.png").symlink_to(root / "images" / "real.png")
    (root / "images" / "evil.png").symlink_to(outside)
    assert safe_join(root, "images/alias.png") == (root / "images" / "real.png").resolve()
    with pytest.raises(UnsafePathError, match="outside the data root"):
        safe_join(root, "images/evil.png")


def test_escaping_path_in_a_source_is_an_error_naming_the_line(tmp_path):
    root = write_jsonl(tmp_path / "d", [{"image": "a.png", "caption": "ok"}])
    with open(root / "captions.jsonl", "a") as f:
        f.write(json.dumps({"image": "../../etc/passwd", "caption": "sneaky"}) + "\n")
    with pytest.raises(UnsafePathError, match=r"captions\.jsonl:2"):
        build_manifest(DataConfig(format="jsonl", root=str(root)))


def test_symlinked_image_escaping_the_root_is_rejected(tmp_path):
    root = write_jsonl(tmp_path / "d", [{"image": "a.png", "caption": "ok"}])
    (tmp_path / "outside.png").write_bytes(b"x")
    (root / "b.png").symlink_to(tmp_path / "outside.png")
    with open(root / "captions.jsonl", "a") as f:
        f.write(json.dumps({"image": "b.png", "caption": "via a link"}) + "\n")
    with pytest.raises(UnsafePathError, match="b.png"):
        build_manifest(DataConfig(format="jsonl", root=str(root)))


# --- configuration errors ----------------------------------------------------------


def test_unknown_format_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="known formats:.*coco.*flickr8k"):
        build_manifest(DataConfig(format="flickr9k", root=str(tmp_path)))


@pytest.mark.parametrize("val, test", [(0.6, 0.4), (-0.1, 0.1)])
def test_impossible_fractions_are_rejected(tmp_path, val, test):
    write_jsonl(tmp_path, many_images(3))
    with pytest.raises(ManifestError, match="val_fraction"):
        build_manifest(DataConfig(format="jsonl", root=str(tmp_path), val_fraction=val, test_fraction=test))


def test_missing_root_says_what_to_set(tmp_path):
    with pytest.raises(ManifestError, match="data.root"):
        build_manifest(DataConfig(format="jsonl", root=str(tmp_path / "nope")))


def test_config_builds_from_params_and_rejects_typos():
    cfg = build(DataConfig, {"format": "coco", "root": "data/coco", "check_files": False}, "data")
    assert (cfg.format, cfg.check_files) == ("coco", False)
    with pytest.raises(ValueError, match="data.val_fractoin"):
        build(DataConfig, {"val_fractoin": 0.2}, "data")


# --- splits ------------------------------------------------------------------------


def test_hashed_split_is_deterministic_proportional_and_stable_per_image(tmp_path):
    cfg = DataConfig(format="jsonl", root=str(write_jsonl(tmp_path / "all", many_images(600), images=False)),
                     check_files=False, val_fraction=0.1, test_fraction=0.2)
    df, report = build_manifest(cfg)
    again, _ = build_manifest(cfg)
    assert splits_of(df) == splits_of(again)
    assert df["image_id"].is_unique and len(df) == 600 and report["hashed_splits"] == 600
    share = df["split"].value_counts(normalize=True)
    # 600 draws: 4+ standard deviations of slack around the configured fractions.
    assert abs(share["val"] - 0.1) < 0.05 and abs(share["test"] - 0.2) < 0.07

    # An image's split depends on the image alone, not on which others are listed.
    subset = many_images(600)[::7]
    sub_root = write_jsonl(tmp_path / "subset", subset, images=False)
    sub_df, _ = build_manifest(DataConfig(**{**vars(cfg), "root": str(sub_root)}))
    assert splits_of(sub_df) == {k: v for k, v in splits_of(df).items() if k in set(sub_df["image_id"])}

    reseeded, _ = build_manifest(DataConfig(**{**vars(cfg), "seed": 1}))
    assert splits_of(reseeded) != splits_of(df)


def test_source_splits_are_kept_and_rows_are_merged(tmp_path):
    root = write_jsonl(tmp_path, [
        {"image": "a.png", "captions": ["one", "two"], "split": "test"},
        {"image": "b.png", "caption": "novel thing", "split": "novel"},
        {"image": "a.png", "caption": " two ", "split": None},
        {"image": "./a.png", "caption": "three", "split": "test"},
    ])
    df, report = build_manifest(DataConfig(format="jsonl", root=str(root)))
    rows = df.set_index("image_id")
    assert rows.loc["a.png", "split"] == "test" and rows.loc["b.png", "split"] == "novel"
    assert rows.loc["a.png", "captions"] == ["one", "two", "three"]
    assert report["splits"] == {"test": {"images": 1, "captions": 3}, "novel": {"images": 1, "captions": 1}}


def test_image_in_two_splits_is_an_error_naming_both_places(tmp_path):
    root = write_jsonl(tmp_path, [
        {"image": "a.png", "caption": "w", "split": None},
        {"image": "a.png", "caption": "x", "split": "train"},
        {"image": "b.png", "caption": "y", "split": "train"},
        {"image": "a.png", "caption": "z", "split": "test"},
    ])
    # The error points at the two lines that disagree, not at the first mention.
    with pytest.raises(ManifestError, match=r"a\.png is in two splits.*captions\.jsonl:2\).*captions\.jsonl:4"):
        build_manifest(DataConfig(format="jsonl", root=str(root)))


def test_unknown_split_name_is_an_error(tmp_path):
    root = write_jsonl(tmp_path, [{"image": "a.png", "caption": "x", "split": "holdout"}])
    with pytest.raises(ManifestError, match="unknown split 'holdout'"):
        build_manifest(DataConfig(format="jsonl", root=str(root)))


# --- dropped images ----------------------------------------------------------------


def test_missing_and_captionless_images_are_dropped_and_reported(tmp_path, caplog):
    items = many_images(8) + [{"image": "images/blank.png", "captions": ["  ", ""]}]
    root = write_jsonl(tmp_path, items)
    for i in (2, 5):
        (root / f"images/{i:05d}.png").unlink()
    with caplog.at_level(logging.WARNING, logger="pipeline.data.manifest"):
        df, report = build_manifest(DataConfig(format="jsonl", root=str(root)))
    assert len(df) == 8 - 2 and "images/blank.png" not in set(df["image_id"])
    missing = report["dropped"]["missing on disk"]
    assert missing == {"count": 2, "examples": ["images/00002.png", "images/00005.png"]}
    assert report["dropped"]["no non-empty caption"]["count"] == 1
    assert "images/00002.png" in caplog.text

    # Without the file check the missing images stay in.
    df_unchecked, _ = build_manifest(DataConfig(format="jsonl", root=str(root), check_files=False))
    assert len(df_unchecked) == 8  # the captionless one is still out


def test_nothing_usable_is_a_clear_error(tmp_path):
    root = write_jsonl(tmp_path, many_images(3), images=False)
    with pytest.raises(ManifestError, match="no usable images.*3 missing on disk"):
        build_manifest(DataConfig(format="jsonl", root=str(root)))


# --- reading and writing -----------------------------------------------------------


def sample_manifest() -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": ["images/a.png", "images/b.png"],
        "path": ["images/a.png", "images/b.png"],
        "split": ["train", "novel"],
        "captions": [["a red square", "a square"], ["a star, yellow"]],
    })


def test_write_read_roundtrip_keeps_rows_and_data_root(tmp_path):
    out = tmp_path / "sub" / "manifest.parquet"
    write_manifest(sample_manifest(), out, "data/scenes")
    df, data_root = read_manifest(out)
    assert data_root == "data/scenes"
    # A manifest written without languages reads back with every caption in English.
    assert df.to_dict("list") == {**sample_manifest().to_dict("list"), "language": [["en", "en"], ["en"]]}
    assert pq.read_schema(out).metadata[b"data_root"] == b"data/scenes"
    assert [p.name for p in out.parent.iterdir()] == ["manifest.parquet"]  # no temp file left


def test_invalid_manifest_is_not_written_over_a_good_one(tmp_path):
    out = tmp_path / "manifest.parquet"
    write_manifest(sample_manifest(), out, "root")
    bad = sample_manifest().assign(split=["train", "holdout"])
    with pytest.raises(ManifestError, match="holdout"):
        write_manifest(bad, out, "root")
    assert read_manifest(out)[0]["split"].tolist() == ["train", "novel"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda df: df.drop(columns="captions"), "lacks column"),
        (lambda df: df.assign(image_id=["x", "x"]), "duplicate image_id"),
        (lambda df: df.assign(path=["/abs/a.png", "images/b.png"]), "not a clean relative"),
        (lambda df: df.assign(path=["images/../../a.png", "images/b.png"]), "not a clean relative"),
        (lambda df: df.assign(captions=[[], ["x"]]), "non-empty list"),
        (lambda df: df.assign(captions=[[" padded"], ["x"]]), "stripped"),
    ],
)
def test_validate_manifest_rejects_contract_breaks(change, message):
    validate_manifest(sample_manifest())
    with pytest.raises(ManifestError, match=message):
        validate_manifest(change(sample_manifest()))


def test_read_manifest_needs_data_root_metadata(tmp_path):
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.Table.from_pandas(sample_manifest(), preserve_index=False).replace_schema_metadata({}), plain)
    with pytest.raises(ManifestError, match="data_root"):
        read_manifest(plain)
    with pytest.raises(ManifestError, match="run the prepare stage"):
        read_manifest(tmp_path / "absent.parquet")

"""The manifest's `language` column (one code per caption, English when a source has none)
and the `data.languages` filter, on generated multilingual scenes and hand-written files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from pipeline.config import build
from pipeline.data.formats import DataConfig, FormatError
from pipeline.data.manifest import ManifestError, build_manifest, read_manifest, validate_manifest, write_manifest
from pipeline.data.scenes import SceneConfig, generate_scenes


@pytest.fixture(scope="module")
def scenes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    generate_scenes(root, SceneConfig(n_images=8, image_size=64, seed=4, languages=["en", "de", "ja"]))
    return root


def records(root: Path) -> dict[str, dict]:
    lines = (root / "captions.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["image"]: r for r in map(json.loads, lines)}


def write_jsonl(root: Path, items: list[dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "captions.jsonl").write_text("\n".join(json.dumps(i, ensure_ascii=False) for i in items) + "\n",
                                         encoding="utf-8")
    for item in items:
        (root / item["image"]).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(root / item["image"])
    return root


def test_scenes_manifest_tags_every_caption_with_its_language(scenes_root, tmp_path):
    df, report = build_manifest(DataConfig(root=str(scenes_root)))
    source = records(scenes_root)
    assert len(df) == 8
    for row in df.itertuples():
        r = source[row.image_id]
        assert row.language == ["en"] * 5 + ["de"] * 5 + ["ja"] * 5
        assert row.captions == r["captions"] + r["captions_by_language"]["de"] + r["captions_by_language"]["ja"]
    assert report["languages"] == {"de": 40, "en": 40, "ja": 40} and report["captions"] == 120
    json.dumps(report)  # the prepare stage writes it as JSON
    write_manifest(df, tmp_path / "m.parquet", str(scenes_root))
    back, _ = read_manifest(tmp_path / "m.parquet")
    assert back["language"].tolist() == df["language"].tolist() and back["captions"].tolist() == df["captions"].tolist()


def test_languages_filter_keeps_those_captions_only(scenes_root):
    df, report = build_manifest(DataConfig(root=str(scenes_root), languages=["ja"]))
    assert len(df) == 8 and all(row == ["ja"] * 5 for row in df["language"])
    assert all(" " not in c for captions in df["captions"] for c in captions)
    assert report["languages"] == {"ja": 40}
    both, _ = build_manifest(DataConfig(root=str(scenes_root), languages=["de", "en"]))
    assert all(row == ["en"] * 5 + ["de"] * 5 for row in both["language"])  # the source's order, not the filter's


def test_a_language_the_source_lacks_is_an_error_naming_those_it_has(scenes_root):
    with pytest.raises(ManifestError, match=r"data.languages asks for fr, but .* has captions in de, en, ja"):
        build_manifest(DataConfig(root=str(scenes_root), languages=["de", "fr"]))


@pytest.mark.parametrize("bad", [["EN"], ["en", "en"], ["english"], [""]])
def test_malformed_language_codes_are_rejected(scenes_root, bad):
    with pytest.raises(ManifestError, match="data.languages must list distinct lower-case language codes"):
        build_manifest(DataConfig(root=str(scenes_root), languages=bad))


def test_languages_param_builds_from_yaml():
    assert build(DataConfig, {"languages": ["de", "ja"]}, "data").languages == ["de", "ja"]
    assert build(DataConfig, None, "data").languages == []


def test_sources_without_languages_are_english(tmp_path):
    root = tmp_path / "csv"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(root / "images" / "a.png")
    (root / "captions.csv").write_text("image,caption\nimages/a.png,a dog\nimages/a.png,a brown dog\n")
    df, report = build_manifest(DataConfig(format="csv", root=str(root)))
    assert df["language"].tolist() == [["en", "en"]] and report["languages"] == {"en": 2}
    validate_manifest(df.drop(columns="language"))  # the column is optional for tables built by hand


def test_jsonl_language_keys(tmp_path):
    root = write_jsonl(tmp_path / "j", [
        {"image": "images/a.png", "captions": ["un chat"], "language": "fr",
         "captions_by_language": {"de": ["eine Katze", "eine Katze"], "en": ["a cat"]}},
        {"image": "images/a.png", "caption": "a cat", "captions_by_language": {"es": ["un gato"]}},
        {"image": "images/b.png", "captions_by_language": {"de": ["ein Hund"]}},
        {"image": "images/c.png", "captions": ["chat"], "language": "fr"},
    ])
    df, report = build_manifest(DataConfig(format="jsonl", root=str(root)))
    rows = {row.image_id: list(zip(row.language, row.captions)) for row in df.itertuples()}
    # Duplicates are dropped within a language only: "a cat" twice in English is one caption.
    assert rows["images/a.png"] == [("fr", "un chat"), ("de", "eine Katze"), ("en", "a cat"), ("es", "un gato")]
    assert rows["images/b.png"] == [("de", "ein Hund")]
    df, report = build_manifest(DataConfig(format="jsonl", root=str(root), languages=["de"]))
    assert sorted(df["image_id"]) == ["images/a.png", "images/b.png"]
    assert report["dropped"] == {"no caption in data.languages": {"count": 1, "examples": ["images/c.png"]}}


@pytest.mark.parametrize("item, message", [
    ({"image": "a.png", "captions": ["x"], "language": "French"}, "language 'French' is not a lower-case"),
    ({"image": "a.png", "captions_by_language": ["x"]}, "must map language codes"),
    ({"image": "a.png", "captions_by_language": {"de": "x"}}, r'"captions_by_language"."de" must be a list'),
    ({"image": "a.png", "captions_by_language": {}}, "captions_by_language"),
])
def test_malformed_language_keys_name_the_line(tmp_path, item, message):
    root = write_jsonl(tmp_path / "bad", [{"image": "ok.png", "captions": ["fine"]}, item])
    with pytest.raises(FormatError, match=rf"captions\.jsonl:2: .*{message}"):
        build_manifest(DataConfig(format="jsonl", root=str(root)))


def test_a_language_column_that_does_not_match_the_captions_is_invalid(scenes_root):
    df, _ = build_manifest(DataConfig(root=str(scenes_root)))
    df.at[0, "language"] = ["en"]
    with pytest.raises(ManifestError, match="one language code per caption"):
        validate_manifest(df)

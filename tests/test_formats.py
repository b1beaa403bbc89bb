"""Every data-source format, parsed from the tiny annotation files under
tests/fixtures/formats/<name>/ through build_manifest. Images are generated into a tmp
copy of the fixture; the ones a test leaves out must come back as "missing on disk"."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from pipeline.data.formats import FORMATS, DataConfig, FormatError
from pipeline.data.manifest import UnsafePathError, build_manifest

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
HASHED = {"train", "val", "test"}


def dataset(tmp_path: Path, fixture: str, images: list[str], empty_dirs: tuple[str, ...] = ()) -> Path:
    root = tmp_path / fixture
    shutil.copytree(FIXTURES / fixture, root)
    for rel in images:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (6, 4), (20, 120, 220)).save(path)
    for rel in empty_dirs:
        (root / rel).mkdir(parents=True, exist_ok=True)
    return root


def build(root: Path, fmt: str, **overrides) -> tuple[pd.DataFrame, dict]:
    return build_manifest(DataConfig(format=fmt, root=str(root), **overrides))


def by_id(df: pd.DataFrame) -> dict[str, tuple[str, list[str]]]:
    return {row.image_id: (row.split, row.captions) for row in df.itertuples()}


def test_registry_lists_every_format():
    assert set(FORMATS) == {"scenes", "jsonl", "csv", "flickr8k", "flickr30k", "coco", "karpathy", "multi30k",
                            "crossmodal3600"}


def test_scenes(tmp_path):
    root = dataset(tmp_path, "scenes", [f"images/scene_0000{i}.png" for i in range(3)])  # 00003 missing
    df, report = build(root, "scenes")
    rows = by_id(df)
    assert set(rows) == {"images/scene_00000.png", "images/scene_00001.png", "images/scene_00002.png"}
    assert (df["path"] == df["image_id"]).all()
    assert rows["images/scene_00002.png"][0] == "novel"
    assert rows["images/scene_00000.png"][0] in HASHED and rows["images/scene_00001.png"][0] in HASHED
    # Two lines for scene 0: captions merged, the repeated one kept once.
    assert rows["images/scene_00000.png"][1] == [
        "a red circle above a blue square", "a blue square below a red circle", "two shapes, red and blue"]
    assert report["dropped"] == {"missing on disk": {"count": 1, "examples": ["images/scene_00003.png"]}}


def test_jsonl(tmp_path):
    root = dataset(tmp_path, "jsonl", ["pics/a.jpg", "pics/b.jpg", "pics/c.jpg", "pics/d.jpg"])
    rows = by_id(build(root, "jsonl")[0])
    assert rows["pics/a.jpg"] == ("train", ["a dog runs on the grass"])  # second line differs only in spaces
    assert rows["pics/b.jpg"] == ("test", ["a cat sleeps", "a sleeping cat"])
    assert rows["pics/c.jpg"] == ("val", ["two birds on a wire"])  # "./pics/c.jpg", split "validation"
    assert rows["pics/d.jpg"][0] in HASHED


def test_csv(tmp_path):
    root = dataset(tmp_path, "csv", ["pics/a.jpg", "pics/b.jpg", "pics/c.jpg"])  # d missing
    df, report = build(root, "csv")
    rows = by_id(df)
    assert rows["pics/a.jpg"] == ("train", ["a dog, brown and small, runs", "a dog runs"])
    assert rows["pics/b.jpg"][1] == ['a cat "sleeps" on a sofa', "a cat on a sofa"]
    assert rows["pics/b.jpg"][0] in HASHED  # empty split cells
    assert rows["pics/c.jpg"] == ("test", ["a bird on a wire"])  # the empty caption row is skipped
    assert report["dropped"]["missing on disk"]["examples"] == ["pics/d.jpg"]


def test_csv_without_header_is_rejected(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "captions.csv").write_text("a.jpg,a dog\nb.jpg,a cat\n")
    with pytest.raises(FormatError, match="header naming the columns image, caption"):
        build(root, "csv")


def test_flickr8k_official_splits(tmp_path):
    names = ["1001_a.jpg", "1002_b.jpg", "1003_c.jpg", "1004_d.jpg", "1005_e.jpg"]  # 1006 missing
    # An empty leftover Flicker8k_Dataset/ must not hide the images in Images/.
    root = dataset(tmp_path, "flickr8k", [f"Images/{n}" for n in names], empty_dirs=("Flicker8k_Dataset",))
    df, report = build(root, "flickr8k")
    rows = by_id(df)
    assert {k: v[0] for k, v in rows.items()} == {
        "Images/1001_a.jpg": "train", "Images/1002_b.jpg": "train",
        "Images/1003_c.jpg": "val", "Images/1004_d.jpg": "test"}
    assert rows["Images/1001_a.jpg"][1] == [
        "A child in a pink dress is climbing stairs .", "A girl going into a wooden building ."]
    assert report["dropped"]["not in any official split file"] == {"count": 1, "examples": ["1005_e.jpg"]}
    assert report["dropped"]["missing on disk"] == {"count": 1, "examples": ["Images/1006_f.jpg"]}
    assert report["hashed_splits"] == 0


def test_flickr8k_image_in_two_split_files_is_an_error(tmp_path):
    root = dataset(tmp_path, "flickr8k", [])
    with open(root / "Flickr_8k.testImages.txt", "a") as f:
        f.write("1003_c.jpg\n")
    with pytest.raises(FormatError, match=r"1003_c\.jpg is in two splits.*devImages.*testImages"):
        build(root, "flickr8k")


def test_flickr8k_partial_split_files_are_an_error(tmp_path):
    root = dataset(tmp_path, "flickr8k", [])
    (root / "Flickr_8k.devImages.txt").unlink()
    with pytest.raises(FormatError, match="devImages"):
        build(root, "flickr8k")


def test_flickr8k_kaggle_captions_csv(tmp_path):
    names = ["1001_a.jpg", "1002_b.jpg", "1003_c.jpg", "1004_d.jpg"]
    root = dataset(tmp_path, "flickr8k_kaggle", [f"Images/{n}" for n in names])
    df, report = build(root, "flickr8k")
    rows = by_id(df)
    assert set(rows) == {f"Images/{n}" for n in names}
    assert rows["Images/1001_a.jpg"][1][1] == "A girl, in pink, going into a wooden building ."
    assert {split for split, _ in rows.values()} <= HASHED and report["hashed_splits"] == 4
    assert build(root, "flickr8k")[0].equals(df)


@pytest.mark.parametrize("fixture", ["flickr30k", "flickr30k_csv"])
def test_flickr30k(tmp_path, fixture):
    names = ["1000092795.jpg", "10002456.jpg", "1000268201.jpg", "2199200615.jpg"]
    root = dataset(tmp_path, fixture, [f"flickr30k_images/{n}" for n in names], empty_dirs=("Images",))
    rows = by_id(build(root, "flickr30k")[0])
    assert rows["flickr30k_images/1000092795.jpg"][1][1] == "Two young , White males are outside near many bushes ."
    assert rows["flickr30k_images/10002456.jpg"][1] == [
        "Several men in hard hats are operating a giant pulley system ."]
    assert {split for split, _ in rows.values()} <= HASHED
    if fixture == "flickr30k_csv":  # includes Kaggle's row with a missing '|'
        assert rows["flickr30k_images/2199200615.jpg"][1] == [
            "A dog runs across the grass .", "A brown dog running through the grass ."]


def test_coco(tmp_path):
    train = [f"train2017/0000000000{i:02d}.jpg" for i in (9, 25, 30)]
    val = [f"val2017/000000000{i:03d}.jpg" for i in (139, 285, 632, 724)]
    root = dataset(tmp_path, "coco", train + val)
    df, report = build(root, "coco")
    rows = by_id(df)
    assert rows["train2017/000000000009.jpg"] == ("train", [
        "Closeup of bins of food that include broccoli and bread.",
        "A meal is presented in brightly colored plastic trays."])
    assert rows["train2017/000000000025.jpg"] == ("train", ["A giraffe eating food from the top of the tree."])
    assert {rows[v][0] for v in val} <= {"val", "test"}
    assert report["dropped"]["no non-empty caption"]["examples"] == ["train2017/000000000030.jpg"]


def test_coco_val2017_is_halved_into_val_and_test(tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    images = [{"id": i, "file_name": f"{i:012d}.jpg"} for i in range(400)]
    anns = [{"id": i, "image_id": i, "caption": f"picture {i}"} for i in range(400)]
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": anns}))
    df, _ = build(root, "coco", check_files=False)
    counts = df["split"].value_counts()
    assert set(counts.index) == {"val", "test"} and abs(counts["val"] - 200) < 40  # 4 sd of a fair coin
    assert by_id(build(root, "coco", check_files=False)[0]) == by_id(df)


def test_karpathy_flickr(tmp_path):
    root = dataset(tmp_path, "karpathy", [f"images/100{i}_{c}.jpg" for i, c in zip(range(1, 5), "abcd")])
    df, report = build(root, "karpathy")
    assert {k: v[0] for k, v in by_id(df).items()} == {
        "images/1001_a.jpg": "train", "images/1002_b.jpg": "train",  # restval counts as train
        "images/1003_c.jpg": "val", "images/1004_d.jpg": "test"}
    assert by_id(df)["images/1004_d.jpg"][1] == ["A man on a bench .", "A man sleeping outside ."]
    assert report["dropped"]["missing on disk"]["examples"] == ["images/1005_e.jpg"]


@pytest.mark.parametrize("prefix", ["", "images/"])
def test_karpathy_coco_filepaths(tmp_path, prefix):
    files = ["val2014/COCO_val2014_000000391895.jpg", "val2014/COCO_val2014_000000522418.jpg",
             "train2014/COCO_train2014_000000057870.jpg", "val2014/COCO_val2014_000000184613.jpg"]
    root = dataset(tmp_path, "karpathy_coco", [prefix + f for f in files])
    rows = by_id(build(root, "karpathy")[0])
    assert {k: v[0] for k, v in rows.items()} == {
        prefix + files[0]: "test", prefix + files[1]: "train", prefix + files[2]: "train", prefix + files[3]: "val"}
    assert rows[prefix + files[0]][1] == ["A man with a red helmet on a small moped on a dirt road."]


def test_karpathy_needs_to_be_told_which_file_when_several(tmp_path):
    root = dataset(tmp_path, "karpathy", ["images/1001_a.jpg"])
    shutil.copy(FIXTURES / "karpathy_coco" / "dataset_coco.json", root)
    with pytest.raises(FormatError, match="data.karpathy_file"):
        build(root, "karpathy")
    df, _ = build(root, "karpathy", karpathy_file="dataset_flickr8k.json", check_files=False)
    assert "images/1001_a.jpg" in set(df["image_id"])


@pytest.mark.parametrize(
    "fixture, fmt, file, line",
    [
        ("scenes", "scenes", "captions.jsonl", '{"image": "/etc/passwd", "captions": ["x"]}\n'),
        ("csv", "csv", "captions.csv", '../outside.jpg,"a, b",train\n'),
        ("flickr8k_kaggle", "flickr8k", "captions.txt", "../../outside.jpg,a caption\n"),
        ("flickr30k", "flickr30k", "results_20130124.token", "../x.jpg#0\ta caption\n"),
        ("crossmodal3600", "crossmodal3600", "captions.jsonl", '{"image/key": "../../x", "en": {"caption": ["x"]}}\n'),
    ],
)
def test_escaping_paths_are_rejected_naming_the_line(tmp_path, fixture, fmt, file, line):
    root = dataset(tmp_path, fixture, [])
    text = (root / file).read_bytes()
    (root / file).write_bytes(text + line.encode())
    number = text.count(b"\n") + 1  # fixtures end with a newline
    with pytest.raises(UnsafePathError, match=rf"{file}:{number}\b"):
        build(root, fmt, check_files=False)


@pytest.mark.parametrize(
    "fixture, fmt, file",
    [
        ("flickr8k", "flickr8k", "Flickr8k.token.txt"),
        ("csv", "csv", "captions.csv"),
        ("scenes", "scenes", "captions.jsonl"),
    ],
)
def test_bom_and_crlf_parse_like_plain_text(tmp_path, fixture, fmt, file):
    quirky = (FIXTURES / fixture / file).read_bytes()
    # The committed fixture must really carry the quirk (a CRLF-normalising checkout would hide it).
    assert quirky.startswith(b"\xef\xbb\xbf") or b"\r\n" in quirky
    plain_root = dataset(tmp_path / "plain", fixture, [])
    (plain_root / file).write_bytes(quirky.removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n"))
    quirky_df, _ = build(dataset(tmp_path / "quirky", fixture, []), fmt, check_files=False)
    plain_df, _ = build(plain_root, fmt, check_files=False)
    assert quirky_df.equals(plain_df)


def test_malformed_lines_name_file_and_line(tmp_path):
    root = dataset(tmp_path, "flickr30k", [])
    with open(root / "results_20130124.token", "a") as f:
        f.write("no caption separator here\n")
    with pytest.raises(FormatError, match=r"results_20130124\.token:6"):
        build(root, "flickr30k")
    root = dataset(tmp_path / "j", "jsonl", [])
    with open(root / "captions.jsonl", "a") as f:
        f.write('{"image": "x.jpg", "caption": \n')
    with pytest.raises(FormatError, match=r"captions\.jsonl:7: not valid JSON"):
        build(root, "jsonl")


def test_missing_caption_file_says_what_to_set(tmp_path):
    with pytest.raises(FormatError, match="Flickr8k.token.txt.*data.captions_file"):
        build(tmp_path, "flickr8k")

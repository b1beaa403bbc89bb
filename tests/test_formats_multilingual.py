"""The multilingual formats through build_manifest, from the tiny files under
tests/fixtures/formats/: Multi30k (Task 1 and Task 2 layouts of github.com/multi30k/dataset),
Crossmodal-3600's captions.jsonl, COCO-style JSON in Japanese (STAIR Captions) and a
Karpathy-layout file in Chinese (COCO-CN): the manifest's captions, their `language`, the
splits, the data.languages filter and the errors bad input gets."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from test_formats import FIXTURES, HASHED, build, by_id, dataset

from pipeline.data.formats import FormatError
from pipeline.data.manifest import ManifestError, UnsafePathError

TRAIN = ["1000092795.jpg", "10002456.jpg", "1000268201.jpg", "1000344755.jpg"]
VAL = ["1018148011.jpg", "1029450589.jpg"]
TEST = ["1007129816.jpg", "1009434119.jpg"]
M30K_SPLITS = {**dict.fromkeys(TRAIN, "train"), **dict.fromkeys(VAL, "val"), **dict.fromkeys(TEST, "test")}
TASK1 = FIXTURES / "multi30k" / "data" / "task1"
TASK2 = FIXTURES / "multi30k" / "data" / "task2"
XM3600_KEYS = ["356a192b7913b04c", "77de68daecd823ba", "fe5dbbcea5ce7e29", "b1d5781111d84f7b",
               "1b6453892473a467", "902ba3cda1883801", "da4b9237bacccdf1", "c1dfd96eea8cc2b6"]


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8-sig").splitlines()


def tagged(df, image_id: str) -> list[tuple[str, str]]:
    row = df.set_index("image_id").loc[image_id]
    return list(zip(row["language"], row["captions"]))


def multi30k(tmp_path: Path, missing: tuple[str, ...] = ()) -> Path:
    return dataset(tmp_path, "multi30k", [f"flickr30k-images/{n}" for n in M30K_SPLITS if n not in missing])


# --- Multi30k ----------------------------------------------------------------------------

def test_multi30k_task2_five_descriptions_per_image_and_language(tmp_path):
    root = multi30k(tmp_path, missing=(TEST[1],))
    df, report = build(root, "multi30k")  # Task 2 is the default
    assert {k: v[0] for k, v in by_id(df).items()} == {
        f"flickr30k-images/{n}": s for n, s in M30K_SPLITS.items() if n != TEST[1]}
    # line 2 of every train.N.<lang> file describes line 2 of train_images.txt; German first
    # (languages in code order), each language's descriptions in file number order
    assert tagged(df, f"flickr30k-images/{TRAIN[1]}") == [
        ("de", lines(TASK2 / "raw" / "train.1.de")[1]), ("de", lines(TASK2 / "raw" / "train.2.de")[1]),
        ("en", lines(TASK2 / "raw" / "train.1.en")[1]), ("en", lines(TASK2 / "raw" / "train.2.en")[1])]
    assert report["hashed_splits"] == 0 and report["languages"] == {"de": 14, "en": 14}
    assert report["dropped"] == {"missing on disk": {"count": 1, "examples": [f"flickr30k-images/{TEST[1]}"]}}


def test_multi30k_task1_translations(tmp_path):
    df, report = build(multi30k(tmp_path), "multi30k", multi30k_task=1)
    assert {k: v[0] for k, v in by_id(df).items()} == {f"flickr30k-images/{n}": s for n, s in M30K_SPLITS.items()}
    # train.de has a BOM and CRLF line ends; train.fr a blank line 3 (no translation) and a blank last line
    assert tagged(df, f"flickr30k-images/{TRAIN[0]}") == [
        ("cs", lines(TASK1 / "raw" / "train.cs")[0]), ("de", "Zwei junge Männer stehen draußen bei einigen Büschen."),
        ("en", lines(TASK1 / "raw" / "train.en")[0]), ("fr", lines(TASK1 / "raw" / "train.fr")[0])]
    assert [lang for lang, _ in tagged(df, f"flickr30k-images/{TRAIN[2]}")] == ["cs", "de", "en"]
    assert [lang for lang, _ in tagged(df, f"flickr30k-images/{VAL[0]}")] == ["de", "en", "fr"]  # no Czech val
    # test_2017_flickr is another shared task's test set: not read
    assert report["languages"] == {"cs": 4, "de": 8, "en": 8, "fr": 7} and report["images"] == 8


def test_multi30k_reads_gzipped_files_like_the_repository_ships_them(tmp_path):
    plain, _ = build(multi30k(tmp_path / "plain"), "multi30k")
    root = multi30k(tmp_path / "gz")
    for path in (root / "data" / "task2" / "raw").iterdir():
        (path.parent / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    zipped, _ = build(root, "multi30k")
    assert zipped.equals(plain)


def test_multi30k_languages_filter(tmp_path):
    root = multi30k(tmp_path)
    df, report = build(root, "multi30k", multi30k_task=1, languages=["fr"])
    assert all(codes == ["fr"] for codes in df["language"])
    assert report["dropped"] == {"no caption in data.languages": {
        "count": 1, "examples": [f"flickr30k-images/{TRAIN[2]}"]}}  # its French line is blank
    with pytest.raises(ManifestError, match=r"asks for es, but .* has captions in cs, de, en, fr"):
        build(root, "multi30k", multi30k_task=1, languages=["es"])


def test_multi30k_misaligned_files_are_an_error(tmp_path):
    root = multi30k(tmp_path)
    with open(root / "data" / "task2" / "raw" / "val.2.de", "a", encoding="utf-8") as f:
        f.write("Eine Zeile zu viel.\n")
    with pytest.raises(FormatError, match=r"val\.2\.de has 3 lines but .*val_images\.txt lists 2 images"):
        build(root, "multi30k")


@pytest.mark.parametrize("name, message", [
    ("train.english", "'english' is not a language code"),
    ("train.1.de", r"train\.1\.de is not named like train\.de"),
])
def test_multi30k_badly_named_text_files_are_an_error(tmp_path, name, message):
    root = multi30k(tmp_path)
    shutil.copy(root / "data" / "task1" / "raw" / "train.en", root / "data" / "task1" / "raw" / name)
    with pytest.raises(FormatError, match=message):
        build(root, "multi30k", multi30k_task=1)


def test_multi30k_language_codes_in_file_names_are_normalised(tmp_path):
    root = multi30k(tmp_path)
    raw = root / "data" / "task1" / "raw"
    for split in ("train", "val", "test_2016_flickr"):
        (raw / f"{split}.fr").rename(raw / f"{split}.FR_ca")
    df, report = build(root, "multi30k", multi30k_task=1)
    assert report["languages"] == {"cs": 4, "de": 8, "en": 8, "fr-ca": 7}


def test_multi30k_task_folder_errors_say_what_to_set(tmp_path):
    root = multi30k(tmp_path)
    shutil.rmtree(root / "data" / "task2")
    with pytest.raises(FormatError, match="no Task 2 folder.*set data.multi30k_task=1"):
        build(root, "multi30k")
    with pytest.raises(FormatError, match="multi30k_task must be 1 or 2"):
        build(root, "multi30k", multi30k_task=3)
    (root / "data" / "task1" / "image_splits" / "val.txt").unlink()
    with pytest.raises(FormatError, match=r"val\.\w+ has no image list .*val\.txt"):
        build(root, "multi30k", multi30k_task=1)


def test_multi30k_image_list_escaping_the_root_is_rejected_naming_the_line(tmp_path):
    root = tmp_path / "m"
    (root / "raw").mkdir(parents=True)
    (root / "image_splits").mkdir()
    (root / "image_splits" / "train.txt").write_text("1000092795.jpg\n../../outside.jpg\n")
    (root / "raw" / "train.en").write_text("A dog.\nA cat.\n")
    with pytest.raises(UnsafePathError, match=r"train\.en:2\b"):
        build(root, "multi30k", multi30k_task=1, check_files=False)


# --- Crossmodal-3600 ---------------------------------------------------------------------

def xm3600(tmp_path: Path) -> Path:
    return dataset(tmp_path, "crossmodal3600", [f"images/{key}.jpg" for key in XM3600_KEYS])


def test_crossmodal3600(tmp_path):
    df, report = build(xm3600(tmp_path), "crossmodal3600")
    source = {item["image/key"]: item for item in map(json.loads, lines(FIXTURES / "crossmodal3600" / "captions.jsonl"))}
    assert set(df["image_id"]) == {f"images/{key}.jpg" for key in XM3600_KEYS}
    for row in df.itertuples():
        item = source[row.image_id.removeprefix("images/").removesuffix(".jpg")]
        expected = [(lang, c) for lang, value in item.items() if "/" not in lang for c in value["caption"]]
        assert list(zip(row.language, row.captions)) == expected  # `caption`, not the tokenized variants
    # no split in the file: every image hashed, with the usual fractions
    assert set(df["split"]) == HASHED and report["hashed_splits"] == len(XM3600_KEYS)
    assert report["languages"] == {"de": 9, "en": 9, "fil": 8, "ja": 9, "sw": 8, "zh": 8}


def test_crossmodal3600_languages_filter(tmp_path):
    root = xm3600(tmp_path)
    df, report = build(root, "crossmodal3600", languages=["zh", "ja"])
    assert len(df) == len(XM3600_KEYS) and report["languages"] == {"ja": 9, "zh": 8}
    assert all(codes[0] == "ja" and set(codes) == {"ja", "zh"} for codes in df["language"])
    with pytest.raises(ManifestError, match=r"asks for fr, but .* has captions in de, en, fil, ja, sw, zh"):
        build(root, "crossmodal3600", languages=["en", "fr"])


@pytest.mark.parametrize("item, message", [
    ({"image/key": "abc", "English": {"caption": ["x"]}}, r"key \(not image metadata.*'English' is not a language"),
    ({"image/key": "abc", "en": ["x"]}, r'"en" must be an object whose "caption" is a list of strings'),
    ({"image/key": "abc", "en": {"caption": "x"}}, r'"en" must be an object whose "caption"'),
    ({"key": "abc", "en": {"caption": ["x"]}}, r'expected an object with a string "image/key"'),
])
def test_crossmodal3600_bad_lines_name_file_and_line(tmp_path, item, message):
    root = xm3600(tmp_path)
    with open(root / "captions.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(item) + "\n")
    with pytest.raises(FormatError, match=rf"captions\.jsonl:{len(XM3600_KEYS) + 1}: {message}"):
        build(root, "crossmodal3600")


def test_crossmodal3600_codes_are_normalised_and_region_subtags_kept(tmp_path):
    root = xm3600(tmp_path)
    with open(root / "captions.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"image/key": XM3600_KEYS[0], "PT_br": {"caption": ["Um ônibus vermelho."]},
                            "zh-TW": {"caption": ["一輛紅色公車。"]}}, ensure_ascii=False) + "\n")
    df, _ = build(root, "crossmodal3600", languages=["pt-br", "zh-tw", "zh"])
    assert tagged(df, f"images/{XM3600_KEYS[0]}.jpg") == [
        ("zh", "一辆红色公交车停在市场街边。"), ("pt-br", "Um ônibus vermelho."), ("zh-tw", "一輛紅色公車。")]


# --- COCO-style JSON in other languages --------------------------------------------------

STAIR_TRAIN = [f"train2014/COCO_train2014_{i:012d}.jpg" for i in (9, 25, 34, 36)]
STAIR_VAL = [f"val2014/COCO_val2014_{i:012d}.jpg" for i in (42, 73, 74, 133)]


def test_stair_captions_are_japanese_coco(tmp_path):
    df, report = build(dataset(tmp_path, "stair", STAIR_TRAIN + STAIR_VAL), "coco")
    rows = by_id(df)
    assert {rows[n][0] for n in STAIR_TRAIN} == {"train"} and {rows[n][0] for n in STAIR_VAL} == {"val", "test"}
    assert rows[STAIR_TRAIN[1]][1] == ["キリンが木の葉を食べている。", "高い木のそばに一頭のキリンがいる。"]
    assert report["languages"] == {"ja": 16}
    with pytest.raises(ManifestError, match="asks for en, but .* has captions in ja"):
        build(tmp_path / "stair", "coco", languages=["en"])


def test_caption_language_names_the_language_of_files_that_do_not(tmp_path):
    coco = dataset(tmp_path, "coco", [])
    df, report = build(coco, "coco", caption_language="ZH_tw", check_files=False)
    assert set(report["languages"]) == {"zh-tw"} and all(set(codes) == {"zh-tw"} for codes in df["language"])
    assert set(build(coco, "coco", check_files=False)[1]["languages"]) == {"en"}  # the default
    # an explicit language also overrides STAIR's
    assert set(build(dataset(tmp_path, "stair", []), "coco", caption_language="ja-jp",
                     check_files=False)[1]["languages"]) == {"ja-jp"}
    with pytest.raises(FormatError, match=r"data.caption_language: 'Chinese' is not a language code"):
        build(coco, "coco", caption_language="Chinese")


def test_coco_captions_file_pattern_picks_the_pair(tmp_path):
    root = dataset(tmp_path, "stair", [])
    (root / "annotations").mkdir()
    english = {"images": [{"id": 9, "file_name": "COCO_train2014_000000000009.jpg"}],
               "annotations": [{"image_id": 9, "caption": "A lunch box with bread and broccoli."}]}
    (root / "annotations" / "captions_train2014.json").write_text(json.dumps(english))
    df, _ = build(root, "coco", check_files=False)  # COCO's own English files come first
    assert df["language"].tolist() == [["en"]] and df["image_id"].tolist() == [STAIR_TRAIN[0]]
    df, _ = build(root, "coco", check_files=False, captions_file="stair_captions_v1.2_{split}.json")
    assert len(df) == 8 and set(c for codes in df["language"] for c in codes) == {"ja"}
    with pytest.raises(FormatError, match=r"must contain \{split\}"):
        build(root, "coco", captions_file="stair_captions_v1.2_train.json")
    with pytest.raises(FormatError, match="no caption annotations found"):
        build(root, "coco", captions_file="nothing_{split}.json")


def test_coco_cn_in_karpathy_layout(tmp_path):
    """COCO-CN's captioning release: Karpathy's layout, file names without a filepath."""
    names = ["val2014/COCO_val2014_000000000042.jpg", "train2014/COCO_train2014_000000000009.jpg"]
    root = dataset(tmp_path, "karpathy_coco", names)  # the fixture's dataset_coco.json is left unread
    images = [{"filename": names[0].split("/")[1], "split": "test", "sentences": [{"raw": "一只小狗坐在台子上。"}]},
              {"filename": names[1].split("/")[1], "split": "train", "sentences": [{"raw": "饭盒里有面包和西兰花。"}]}]
    (root / "dataset_mscoco-cn.json").write_text(json.dumps({"images": images}, ensure_ascii=False), encoding="utf-8")
    df, report = build(root, "karpathy", karpathy_file="dataset_mscoco-cn.json", caption_language="zh")
    assert by_id(df) == {names[0]: ("test", ["一只小狗坐在台子上。"]), names[1]: ("train", ["饭盒里有面包和西兰花。"])}
    assert report["languages"] == {"zh": 2}

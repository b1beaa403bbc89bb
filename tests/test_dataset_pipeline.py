"""The pipeline end to end on a real data-set layout instead of the embedded scenes: a
tiny Flickr8k (authors' token file, official split lists, images in `Flicker8k_Dataset/`)
is generated, then the prepare -> features -> vocab -> train -> evaluate commands of
dvc.yaml run in order, as DVC would run them, with only `data.format` / `data.root`
switched and tiny sizes. Checks: the official splits survive into the manifest, the
vocabulary comes from train captions only, and evaluation reports the test metrics."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.data.manifest import read_manifest
from pipeline.data.scenes import SceneConfig, captions, render, sample_scene
from pipeline.data.vocab import UNK, tokenize
from pipeline.data.vocabularies import load_vocab

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "features", "vocab", "train", "evaluate")
SPLIT_SIZES = {"train": 24, "val": 8, "test": 8}
SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
               "test": "Flickr_8k.testImages.txt"}
IMAGE_DIR = "Flicker8k_Dataset"  # sic: the folder name in the authors' archive
UNLISTED = 2  # the real token file names ~90 images that are in no split list
# Words that occur only in one held-out split, often enough to pass vocab.min_freq.
TEST_ONLY_WORD, VAL_ONLY_WORD = "snapshot", "depicted"
TINY = {
    "data": {"format": "flickr8k", "root": "data/flickr8k"},
    "features": {"batch_size": 16, "num_workers": 0},
    "vocab": {"min_freq": 1},  # every train word is kept, so a missing word cannot be a frequency cut
    "train": {"epochs": 2, "embed_size": 32, "hidden_size": 32, "batch_size": 32},
    # python backend: the Java scorers (covered by test_pipeline_smoke) would double the runtime
    "evaluate": {"beam_size": 2, "sheet_images": 4, "backend": "python"},
}


def flickr_caption(text: str) -> str:
    """The authors' style: capitalised, space before the final full stop."""
    return f"{text[0].upper()}{text[1:]} ."


def write_flickr8k(root: Path, seed: int = 0) -> dict[str, dict]:
    """Render shape scenes as Flickr-named JPEGs with 5 true captions each and write the
    authors' annotation files. Returns image name -> {"split", "captions"} as written."""
    (root / IMAGE_DIR).mkdir(parents=True)
    cfg = SceneConfig(image_size=64, novel_fraction=0.0)
    splits = [s for s, n in SPLIT_SIZES.items() for _ in range(n)] + [None] * UNLISTED
    written, token_lines = {}, []
    for i, split in enumerate(splits):
        rng = np.random.default_rng([seed, i])
        scene = sample_scene(rng, cfg, novel=False)
        name = f"{1000268201 + i * 7919}_{rng.bytes(5).hex()}.jpg"
        render(rng, scene, cfg.image_size).save(root / IMAGE_DIR / name, quality=90)
        texts = [flickr_caption(t) for t in captions(rng, scene)]
        if split == "test":
            texts[0] = texts[0][:-2] + f" in a {TEST_ONLY_WORD} ."
        elif split == "val":
            texts[0] = texts[0][:-2] + f" {VAL_ONLY_WORD} here ."
        token_lines += [f"{name}#{k}\t{text}" for k, text in enumerate(texts)]
        written[name] = {"split": split, "captions": texts}
    # utf-8 BOM and CRLF line ends, as in files that went through Windows tools
    (root / "Flickr8k.token.txt").write_bytes(("\ufeff" + "\r\n".join(token_lines) + "\r\n").encode())
    for split, file in SPLIT_FILES.items():
        names = [n for n, w in written.items() if w["split"] == split]
        (root / file).write_text("\n".join(names) + "\n")
    return written


def run_stage(name: str, cwd: Path) -> None:
    """The stage's own command line from dvc.yaml, with this interpreter as `python`."""
    cmd = shlex.split(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][name]["cmd"])
    assert cmd[0] == "python", cmd
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, *cmd[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"stage {name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    work = tmp_path_factory.mktemp("flickr8k_project")
    written = write_flickr8k(work / "data" / "flickr8k")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in STAGES:
        run_stage(stage, work)
    return work, written


def test_manifest_keeps_the_official_splits(project):
    work, written = project
    manifest, root = read_manifest(work / "data/manifest.parquet")
    assert root == "data/flickr8k"
    expected = {f"{IMAGE_DIR}/{n}": w["split"] for n, w in written.items() if w["split"]}
    assert dict(zip(manifest.image_id, manifest.split)) == expected
    # captions keep the file's text (whitespace-normalised), 5 per image, in file order
    first = next(n for n, w in written.items() if w["split"] == "test")
    row = manifest.set_index("image_id").loc[f"{IMAGE_DIR}/{first}"]
    assert list(row.captions) == written[first]["captions"]

    report = json.loads((work / "reports/prepare.json").read_text())
    assert report["hashed_splits"] == 0  # every split came from the split files
    assert {s: v["images"] for s, v in report["splits"].items()} == SPLIT_SIZES
    unlisted = sorted(n for n, w in written.items() if w["split"] is None)
    assert report["dropped"]["not in any official split file"]["count"] == UNLISTED
    assert report["dropped"]["not in any official split file"]["examples"] == unlisted


def test_vocabulary_comes_from_train_captions_only(project):
    work, written = project
    vocab = load_vocab(work / "data/vocab.json")
    assert TEST_ONLY_WORD not in vocab.stoi and VAL_ONLY_WORD not in vocab.stoi
    train_tokens = {t for w in written.values() if w["split"] == "train" for c in w["captions"] for t in tokenize(c)}
    assert TEST_ONLY_WORD not in train_tokens and VAL_ONLY_WORD not in train_tokens  # the premise
    assert train_tokens <= set(vocab.stoi)  # min_freq 1: every train word is in
    assert vocab.encode(f"a {TEST_ONLY_WORD}") == [vocab.start_id, vocab.stoi["a"], vocab.unk_id, vocab.end_id]
    assert vocab.itos[vocab.unk_id] == UNK

    report = json.loads((work / "reports/vocab.json").read_text())
    assert report["unk_rate_train"] == 0.0  # min_freq 1: every train token is known
    assert report["unk_rate_test"] > 0.0 and report["unk_rate_val"] > 0.0
    assert report["size"] == len(vocab)


def test_evaluate_reports_test_metrics(project):
    work, written = project
    metrics = json.loads((work / "metrics/eval.json").read_text())
    assert set(metrics) == {"test"}  # Flickr8k has no `novel` split
    for decoding in ("greedy", "beam"):
        for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider"):
            value = metrics["test"][decoding][key]
            assert isinstance(value, float) and 0.0 <= value <= 10.0, (decoding, key, value)
            if key != "cider":
                assert value <= 1.0  # 0-1 scale, not the papers' x100

    info = json.loads((work / "reports/eval_info.json").read_text())
    assert info["n_images"] == {"test": SPLIT_SIZES["test"]}
    per_image = pd.read_parquet(work / "reports/test_captions.parquet")
    assert len(per_image) == SPLIT_SIZES["test"] and set(per_image.split) == {"test"}
    # references are the Flickr8k captions of that very image
    for row in per_image.itertuples():
        assert list(row.references) == written[row.image_id.split("/", 1)[1]]["captions"]
    assert (work / "models/model.pt").stat().st_size > 0
    assert (work / "reports/caption_sheet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

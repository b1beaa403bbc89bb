"""Each multilingual format end to end: its fixture (tests/fixtures/formats/, tiny generated
images) goes through the prepare -> features -> vocab -> train -> evaluate commands of
dvc.yaml, as DVC runs them, with only the data params switched and tiny sizes: Multi30k
Task 2 kept to its German captions (data.languages), Crossmodal-3600 in all its languages,
STAIR Captions (Japanese COCO). About 40 s per format on 2 cores."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_dataset_pipeline import ROOT, STAGES, run_stage
from test_formats import dataset
from test_formats_multilingual import M30K_SPLITS, STAIR_TRAIN, STAIR_VAL, XM3600_KEYS

from pipeline.data.manifest import read_manifest

CASES = {
    "multi30k": ("multi30k", [f"flickr30k-images/{n}" for n in M30K_SPLITS], {"languages": ["de"]}),
    # hashed splits: fractions that leave the 8 images val and test ones
    "crossmodal3600": ("crossmodal3600", [f"images/{k}.jpg" for k in XM3600_KEYS],
                       {"val_fraction": 0.25, "test_fraction": 0.25}),
    "coco": ("stair", STAIR_TRAIN + STAIR_VAL, {}),
}
LANGUAGES = {"multi30k": {"de"}, "crossmodal3600": {"de", "en", "fil", "ja", "sw", "zh"}, "coco": {"ja"}}
# Japanese and Chinese have no spaces: the word vocabulary refuses them (pipeline/data/multilingual.py)
SUBWORDS = {"kind": "sentencepiece", "model_type": "bpe", "size": 120}
VOCAB = {"multi30k": {}, "crossmodal3600": SUBWORDS, "coco": SUBWORDS}
TINY = {
    "features": {"batch_size": 16, "num_workers": 0},
    "vocab": {"min_freq": 1},
    "train": {"epochs": 1, "embed_size": 32, "hidden_size": 32, "batch_size": 32, "scst_epochs": 0},
    "evaluate": {"beam_size": 2, "sheet_images": 2, "backend": "python"},  # python: no Java start-up
}


@pytest.fixture(scope="module", params=list(CASES))
def project(request, tmp_path_factory) -> tuple[str, Path]:
    fmt = request.param
    fixture, images, data = CASES[fmt]
    work = tmp_path_factory.mktemp(f"{fmt}_project")
    dataset(work / "data", fixture, images)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in {**TINY, "data": {"format": fmt, "root": f"data/{fixture}", **data},
                            "vocab": {**TINY["vocab"], **VOCAB[fmt]}}.items():
        params[section].update(values)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    for stage in STAGES:
        run_stage(stage, work)
    return fmt, work


def test_manifest_has_the_languages_and_splits(project):
    fmt, work = project
    manifest, _ = read_manifest(work / "data/manifest.parquet")
    assert {code for codes in manifest["language"] for code in codes} == LANGUAGES[fmt]
    assert set(manifest["split"]) == {"train", "val", "test"}
    report = json.loads((work / "reports/prepare.json").read_text())
    assert report["images"] == len(CASES[fmt][1]) and set(report["languages"]) == LANGUAGES[fmt]


def test_evaluate_scores_the_test_images_against_their_captions(project):
    fmt, work = project
    manifest, _ = read_manifest(work / "data/manifest.parquet")
    metrics = json.loads((work / "metrics/eval.json").read_text())
    info = json.loads((work / "reports/eval_info.json").read_text())
    default = info["default_language"]  # the top-level figures' language: English when the model has it
    # METEOR 1.5 is English only (reports/eval_info.json says so for the others)
    keys = ("bleu_4", "meteor", "rouge_l", "cider") if default == "en" else ("bleu_4", "rouge_l", "cider")
    for decoding in ("greedy", "beam"):
        for key in keys:
            assert 0.0 <= metrics["test"][decoding][key] <= 10.0, (decoding, key)
    assert set(info["languages"]) == LANGUAGES[fmt] and set(metrics.get("by_language", {})) < LANGUAGES[fmt]
    per_image = pd.read_parquet(work / "reports/test_captions.parquet")
    test = manifest[manifest.split == "test"].set_index("image_id")
    assert sorted(per_image[per_image.language == default].image_id) == sorted(test.index)
    for row in per_image.itertuples():  # the references: the manifest's captions in the row's language
        captions = zip(test.loc[row.image_id, "captions"], test.loc[row.image_id, "language"])
        assert list(row.references) == [c for c, code in captions if code == row.language]

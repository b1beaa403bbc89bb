"""The grounded metric inside evaluate: scenes objects carried from captions.jsonl into the
manifest, a grounded block per split and decoding in eval.json, per-image columns, sheet
items with wrong words, none of it for data without objects, and the summary table."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.data.formats import DataConfig
from pipeline.data.manifest import build_manifest, read_manifest, write_manifest
from pipeline.data.scenes import SceneConfig, generate_scenes
from pipeline.evaluation import summary
from pipeline.evaluation.evaluate import EvaluateConfig, evaluate, sheet_items, write_json
from pipeline.feature_table import FeatureTable

ROW = [{"colour": "red", "shape": "circle", "size": "small", "x": 30, "y": 80},
       {"colour": "blue", "shape": "square", "size": "large", "x": 120, "y": 84}]
ONE = [{"colour": "green", "shape": "star", "size": "small", "x": 80, "y": 80}]
# image -> (split, objects, greedy caption, beam caption): greedy is right, beam is not.
IMAGES = {
    "images/a.png": ("test", ROW, "a red circle to the left of a blue square",
                     "a blue circle to the left of a red square"),
    "images/b.png": ("test", ONE, "a single green star", "a single green star"),
    "images/c.png": ("novel", ROW, "a red circle on the left", "a red circle on the right"),
    "images/d.png": ("train", ONE, "a green star", "a green star"),
}


class FakeCaptioner:
    """Row k of the features decodes to image k's preset caption (greedy or beam)."""

    encoder_info = {"fingerprint": "fp"}
    spatial = False  # reads pooled features from the table
    vocab = SimpleNamespace(decode=lambda caption: caption)

    def decode_features(self, features: torch.Tensor, beam_size: int):
        rows = [list(IMAGES.values())[int(k)] for k in features[:, 0]]
        return SimpleNamespace(tokens=[r[3] if beam_size > 1 else r[2] for r in rows], mean_logprob=[-1.0] * len(rows))


def manifest(with_objects: bool) -> pd.DataFrame:
    df = pd.DataFrame({
        "image_id": list(IMAGES), "path": list(IMAGES), "split": [v[0] for v in IMAGES.values()],
        "captions": [[v[2], "a picture of shapes"] for v in IMAGES.values()],
    })
    if with_objects:
        df["objects"] = [json.dumps(v[1]) for v in IMAGES.values()]
    return df


def fake_scores(refs: dict, hyps: dict, **_) -> SimpleNamespace:
    """Word overlap in place of the COCO metrics: loading WordNet for METEOR alone takes
    ~10 s, and these tests are about the grounded figures beside them."""
    per_image = {i: {m: float(hyps[i] in refs[i]) for m in ("bleu_4", "meteor", "rouge_l", "cider")} for i in hyps}
    corpus = {m: float(np.mean([v[m] for v in per_image.values()])) for m in ("bleu_4", "meteor", "cider")}
    return SimpleNamespace(corpus=corpus, per_image=per_image, implementation={}, skipped={}, scale="", backend="fake")


def run(with_objects: bool):
    table = FeatureTable(list(IMAGES), np.arange(len(IMAGES), dtype=np.float32)[:, None].repeat(4, 1),
                         {"fingerprint": "fp"})
    cfg = EvaluateConfig(beam_size=2, backend="python")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("pipeline.evaluation.evaluate.score_captions", fake_scores)
        return evaluate(FakeCaptioner(), manifest(with_objects), table, cfg)


@pytest.fixture(scope="module")
def scenes_run():
    return run(with_objects=True)


def test_grounded_block_per_split_and_decoding(scenes_run):
    metrics, _, _ = scenes_run
    greedy, beam = metrics["test"]["greedy"]["grounded"], metrics["test"]["beam"]["grounded"]
    assert greedy["object_precision"] == 1.0 and greedy["exact_set"] == 1.0
    assert greedy["relation_accuracy"] == 1.0 and greedy["count_accuracy"] == 1.0
    assert beam["object_precision"] == pytest.approx(1 / 3) and beam["relation_accuracy"] == 0.0
    assert beam["by_objects"]["2"]["object_precision"] == 0.0 and beam["by_objects"]["1"]["exact_set"] == 1.0
    assert set(greedy["by_objects"]) == {"1", "2"}
    novel = metrics["novel"]
    assert novel["greedy"]["grounded"]["relation_accuracy"] == 1.0
    assert novel["beam"]["grounded"]["relation_accuracy"] == 0.0
    assert "bleu_4" in metrics["test"]["beam"]  # the COCO metrics are still there


def test_per_image_columns_and_sheet_items(scenes_run, tmp_path):
    _, per_image, _ = scenes_run
    a = per_image.set_index("image_id").loc["images/a.png"]  # beam caption: colours swapped
    assert a.object_precision == 0.0 and not a.exact_set
    assert list(a.wrong_words) == ["blue", "to", "the", "left", "of", "red"]
    # the greedy caption beside it, right about the image
    assert a.greedy_caption == "a red circle to the left of a blue square" and a.greedy_exact_set
    assert list(a.greedy_wrong_words) == []
    c = per_image.set_index("image_id").loc["images/c.png"]
    assert c.greedy_caption == "a red circle on the left" and c.caption == "a red circle on the right"
    per_image.to_parquet(tmp_path / "captions.parquet", index=False)  # the columns must store
    items = sheet_items(per_image, manifest(True), tmp_path, 4)
    assert [i["image_id"] for i in items] == ["images/a.png", "images/b.png"]
    assert items[0]["wrong"] == [1, 3, 4, 5, 6, 8] and items[1]["wrong"] == []
    assert all("wrong" not in i for i in sheet_items(per_image, manifest(False), tmp_path, 4))


def test_data_without_objects_has_no_grounded_block():
    metrics, per_image, _ = run(with_objects=False)
    assert all("grounded" not in block for split in metrics.values() for block in split.values())
    assert "object_precision" not in per_image.columns
    assert "greedy_exact_set" not in per_image.columns and "greedy_caption" in per_image.columns


def test_scenes_objects_reach_the_manifest_and_other_jsonl_has_none(tmp_path):
    generate_scenes(tmp_path / "scenes", SceneConfig(n_images=6, image_size=64, seed=2))
    df, _ = build_manifest(DataConfig(root=str(tmp_path / "scenes")))
    write_manifest(df, tmp_path / "m.parquet", tmp_path / "scenes")
    back, _ = read_manifest(tmp_path / "m.parquet")
    truth = {json.loads(line)["image"]: json.loads(line)["objects"]
             for line in (tmp_path / "scenes" / "captions.jsonl").read_text().splitlines()}
    assert {i: json.loads(o) for i, o in zip(back.image_id, back.objects)} == truth
    plain = tmp_path / "plain"
    (plain / "images").mkdir(parents=True)
    (plain / "images" / "x.png").write_bytes((tmp_path / "scenes" / "images" / "scene_00000.png").read_bytes())
    # No objects, or objects the metric cannot use (no position): no column, no error.
    (plain / "captions.jsonl").write_text('{"image": "images/x.png", "captions": ["a cat"]}\n'
                                          '{"image": "images/x.png", "objects": [{"shape": "circle"}], "caption": "b"}\n')
    df, _ = build_manifest(DataConfig(format="jsonl", root=str(plain)))
    assert "objects" not in df.columns


def test_summary_prints_one_row_per_split_and_decoding(scenes_run, tmp_path, capsys):
    path = tmp_path / "eval.json"
    write_json(path, scenes_run[0])
    assert summary.main([str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["split", "decoding", "BLEU-4", "CIDEr-D", "METEOR"]
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in lines[2:]}
    assert set(rows) == {("test", "greedy"), ("test", "beam"), ("novel", "greedy"), ("novel", "beam")}
    # By position: headers such as "obj P" hold a space.
    cells = dict(zip(["bleu", "cider", "meteor", "P", "R", "rel", "exact", "e1", "e2", "e3", "twice"],
                     rows[("test", "beam")]))
    assert cells["P"] == "0.333" and cells["rel"] == "0.000" and cells["e3"] == "-" and cells["twice"] == "0.000"
    assert float(cells["bleu"]) == pytest.approx(scenes_run[0]["test"]["beam"]["bleu_4"], abs=1e-3)


def test_summary_without_grounded_and_bad_input(tmp_path, capsys):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"test": {"greedy": {"bleu_4": 0.5, "cider": 1.25, "meteor": 0.3}}}))
    assert summary.main([str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[2].split() == ["test", "greedy", "0.500", "1.250", "0.300"] + ["-"] * 8
    assert summary.main([str(tmp_path / "missing.json")]) == 2
    path.write_text("{}")
    assert summary.main([str(path)]) == 2
    assert summary.main([]) == 2

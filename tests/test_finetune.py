"""End-to-end fine-tuning through the train and evaluate stages on a tiny generated data set
(30 scenes of 64 px, random-init efficientnet_lite0 fed 64 px crops, a small decoder, one epoch)."""
from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from pipeline.checkpoint import load_checkpoint
from pipeline.data.formats import DataConfig
from pipeline.data.manifest import build_manifest, safe_join, write_manifest
from pipeline.data.scenes import SceneConfig, generate_scenes
from pipeline.data.vocab import VocabConfig
from pipeline.data.vocabularies import build_vocab
from pipeline.encoders import EncoderConfig, Preprocess, build_encoder
from pipeline.encoders import registry
from pipeline.evaluation import metrics
from pipeline.feature_table import load_features
from pipeline.features import FeaturesConfig, extract_features
from pipeline.inference.captioner import Captioner
from pipeline.training.finetune import round_like_cache

ENCODER = {"name": "efficientnet_lite0", "weights": "none"}
# unfreeze_blocks: 2 = the last MBConv block and the 1x1 head conv + its batch-norm
UNFROZEN = ("trunk._blocks.15.", "trunk._conv_head.", "trunk._bn1.")


@pytest.fixture(scope="module", autouse=True)
def fast():
    """Lite0 on 64 px crops instead of 224 px: 12x less compute, the same code paths (every
    consumer, fingerprint included, reads the registry entry). And no WordNet for METEOR, whose
    loading takes longer than all the rest; test_metrics covers it."""
    entry = registry._REGISTRY[ENCODER["name"]]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(metrics, "load_wordnet", lambda *a, **k: None)
        mp.setitem(registry._REGISTRY, ENCODER["name"],
                   dataclasses.replace(entry, preprocess=Preprocess(64, 64, entry.preprocess.mean,
                                                                    entry.preprocess.std, "bicubic")))
        yield


@pytest.fixture(scope="module")
def project(tmp_path_factory, fast) -> Path:
    """Manifest, vocabulary and feature cache, as the stages before `train` leave them."""
    work = tmp_path_factory.mktemp("finetune")
    root = work / "scenes"
    generate_scenes(root, SceneConfig(n_images=30, image_size=64))
    manifest, _ = build_manifest(DataConfig(root=str(root), val_fraction=0.2, test_fraction=0.2))
    write_manifest(manifest, work / "manifest.parquet", root)
    train_captions = [c for caps in manifest.loc[manifest.split == "train", "captions"] for c in caps]
    build_vocab(train_captions, VocabConfig(min_freq=1)).save(work / "vocab.json")
    items = [(i, safe_join(root, rel)) for i, rel in zip(manifest.image_id, manifest.path)]
    extract_features(items, EncoderConfig(**ENCODER), FeaturesConfig(batch_size=16, num_workers=0, device="cpu"),
                     work / "features.parquet", work / "feature_errors.json")
    return work


def run_stage(module: str, args: list[str], cwd: Path, monkeypatch) -> None:
    monkeypatch.chdir(cwd)  # outside any git/DVC repo: DVCLive must not touch the project's
    monkeypatch.setattr(sys, "argv", [module, *args])
    importlib.import_module(module).main()


def train_and_evaluate(project: Path, name: str, finetune: bool, monkeypatch) -> Path:
    out = project / name
    out.mkdir()
    params = {
        "encoder": ENCODER,
        "train": {"embed_size": 16, "hidden_size": 32, "dropout": 0.0, "batch_size": 40, "epochs": 1,
                  "device": "cpu", "finetune": finetune, "unfreeze_blocks": 2, "encoder_lr": 1e-3,
                  "finetune_workers": 1},
        "evaluate": {"beam_size": 2, "backend": "python", "sheet_images": 2, "image_batch_size": 8,
                     "num_workers": 0},
    }
    (out / "params.yaml").write_text(yaml.safe_dump(params))
    common = ["--params", str(out / "params.yaml"), "--manifest", str(project / "manifest.parquet"),
              "--features", str(project / "features.parquet")]
    run_stage("stages.train", common + ["--vocab", str(project / "vocab.json"), "--out", str(out / "model.pt"),
                                        "--live", str(out / "dvclive")], out, monkeypatch)
    run_stage("stages.evaluate", common + [
        "--model", str(out / "model.pt"), "--metrics", str(out / "eval.json"), "--info", str(out / "info.json"),
        "--captions", str(out / "captions.parquet"), "--sheet", str(out / "sheet.png")], out, monkeypatch)
    return out


def test_finetune_trains_the_last_blocks_and_evaluate_encodes_images(project, monkeypatch):
    out = train_and_evaluate(project, "on", True, monkeypatch)
    ckpt = load_checkpoint(out / "model.pt")
    base = build_encoder(EncoderConfig(**ENCODER))
    initial, tuned = base.encoder_state_dict(), ckpt["encoder_state"]
    assert tuned is not None and set(tuned) == set(initial)
    changed = {k for k in initial if not torch.equal(initial[k], tuned[k])}
    unfrozen = {k for k in initial if k.startswith(UNFROZEN) and initial[k].is_floating_point()}
    assert unfrozen and unfrozen <= changed  # weights (and unfrozen batch-norm statistics) moved...
    assert all(k.startswith(UNFROZEN) for k in changed)  # ...frozen weights and statistics did not
    cache_fingerprint = load_features(project / "features.parquet").meta["fingerprint"]
    assert ckpt["encoder"]["fingerprint"].startswith(f"{base.fingerprint}+finetuned-")
    assert ckpt["encoder"]["fingerprint"] != cache_fingerprint

    # Evaluate read no cached features: its captions are those the fine-tuned model gives from the files.
    info = json.loads((out / "info.json").read_text())
    assert info["features"].startswith("images")
    metrics = json.loads((out / "eval.json").read_text())
    assert 0.0 <= metrics["test"]["beam"]["cider"] <= 10.0
    per_image = pd.read_parquet(out / "captions.parquet")
    captioner = Captioner.from_checkpoint(out / "model.pt", beam_size=2)
    # The Captioner runs the fine-tuned encoder (batch-norm folded for inference), not the base one.
    reference = build_encoder(EncoderConfig(captioner.encoder.name, "none"))
    reference.load_state_dict(tuned)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(captioner.encoder(x), reference(x), atol=1e-4)
        assert not torch.allclose(base(x), reference(x), atol=1e-4)
    root = project / "scenes"
    results = captioner.caption_batch([safe_join(root, p) for p in per_image.path])
    assert [r.caption for r in results] == list(per_image.caption)
    assert [r.mean_logprob for r in results] == pytest.approx(list(per_image.mean_logprob), abs=1e-4)
    caption = captioner.generate_caption(safe_join(root, per_image.path[0]))
    assert caption == per_image.caption[0]


def test_without_finetune_the_encoder_is_the_caches(project, monkeypatch):
    out = train_and_evaluate(project, "off", False, monkeypatch)
    ckpt = load_checkpoint(out / "model.pt")
    meta = load_features(project / "features.parquet").meta
    assert ckpt["encoder_state"] is None
    assert {k: ckpt["encoder"][k] for k in ("name", "weights", "fingerprint")} == \
        {k: meta[k] for k in ("name", "weights", "fingerprint")}
    assert json.loads((out / "info.json").read_text())["features"] == "cache"


def test_round_like_cache_rounds_values_but_passes_small_gradients():
    x = torch.tensor([0.1, 1.2345678, 300.0001], requires_grad=True)
    y = round_like_cache(x)
    assert torch.equal(y.detach(), x.detach().half().float())
    (y * 1e-9).sum().backward()  # 1e-9 is below float16's smallest subnormal (6e-8)
    assert torch.equal(x.grad, torch.full_like(x, 1e-9))

"""The whole DVC pipeline on a tiny params override, in a temporary copy of the project:
`dvc repro` runs every stage, a second `dvc repro` does nothing, and `dvc exp run -S`
changes a param that `dvc exp show` then lists with the metrics."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = {
    "scenes": {"n_images": 60, "image_size": 64},
    "data": {"val_fraction": 0.2, "test_fraction": 0.2},
    "features": {"batch_size": 16, "num_workers": 0},
    "vocab": {"min_freq": 1},
    "train": {"epochs": 2, "embed_size": 32, "hidden_size": 32, "batch_size": 32, "scst_epochs": 1},
    "evaluate": {"beam_size": 2, "sheet_images": 4},
}


def run(cmd: list[str], cwd: Path, stdout_only: bool = False) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(cwd)}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done.stdout if stdout_only else done.stdout + done.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("project")
    for name in ("pipeline", "stages"):
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", work / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], work)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "init"], work)
    run(["dvc", "init", "-q"], work)
    run(["dvc", "repro"], work)
    return work


def test_repro_produces_every_artifact(project):
    metrics = json.loads((project / "metrics/eval.json").read_text())
    for key in ("bleu_1", "bleu_4", "meteor", "rouge_l", "cider"):
        assert 0.0 <= metrics["test"]["beam"][key] <= 10.0
    grounded = metrics["test"]["greedy"]["grounded"]  # the scenes carry their objects
    # a 2-epoch model on 60 images may name no object at all (precision undefined: null)
    assert grounded["n"] > 0 and 0.0 <= grounded["object_recall"] <= 1.0
    assert grounded["object_precision"] is None or 0.0 <= grounded["object_precision"] <= 1.0
    assert set(grounded["by_objects"]) <= {"1", "2", "3"}
    checkpoint = torch.load(project / "models/model.pt", weights_only=True)
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert checkpoint["decoder"]["decoder"] == params["train"]["decoder"]
    assert checkpoint["encoder"]["spatial"] == params["features"]["spatial"]
    captions = pd.read_parquet(project / "outputs/captions.parquet")
    assert len(captions) == 24 and captions["caption"].notna().all()
    assert (project / "models/model.pt").stat().st_size > 0
    assert (project / "reports/caption_sheet.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (project / "dvc.lock").exists()


def test_second_repro_does_nothing(project):
    out = run(["dvc", "repro"], project)
    assert "Running stage" not in out
    assert "up to date" in out


def test_exp_run_changes_param_and_exp_show_lists_it(project):
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "baseline"], project)
    run(["dvc", "exp", "run", "-S", "train.lr=0.005"], project)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project, stdout_only=True))
    experiments = [e for commit in shown for e in (commit.get("experiments") or [])]
    assert experiments, "dvc exp show lists no experiment"
    revs = [e["revs"][0]["data"] for e in experiments]
    lrs = [r["params"]["params.yaml"]["data"]["train"]["lr"] for r in revs]
    assert 0.005 in lrs
    assert any("metrics/eval.json" in r["metrics"] for r in revs)


def test_mistyped_param_fails_the_stage_naming_the_key(project):
    env = {**os.environ, "PYTHONPATH": str(project)}
    bad = project / "bad_params.yaml"
    bad.write_text("vocab:\n  min_frequency: 2\n")
    done = subprocess.run([sys.executable, "-m", "stages.vocab", "--params", str(bad), "--manifest",
                           "data/manifest.parquet", "--out", "/dev/null", "--report", "/dev/null"],
                          cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert "vocab.min_frequency" in done.stderr

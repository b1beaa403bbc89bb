"""Data-parallel training (pipeline.distributed.ddp) with two gloo processes on the CPU: the
library loop launched like torchrun launches it, and the train stage relaunching itself under
torchrun for `train.nproc: 2`. Each test starts processes that import torch (seconds): marked
`ddp`, so `pytest -m "not ddp"` leaves them out."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
import yaml
from torch.optim.optimizer import register_optimizer_step_post_hook

from pipeline.checkpoint import load_checkpoint
from pipeline.data.vocab import VocabConfig
from pipeline.data.vocabularies import build_vocab
from pipeline.distributed import ddp

pytestmark = pytest.mark.ddp

ROOT = Path(__file__).resolve().parents[1]
COLOURS, SHAPES = ["red", "green", "blue", "yellow"], ["circle", "square", "star"]
WORLD = 2
# 60 images x 2 captions = 120 pairs = 5 full batches of 24: 5 updates an epoch, whatever the
# number of processes (each of 2 ranks computes 12 captions of every batch).
N_TRAIN, BATCH, UPDATES_PER_EPOCH = 60, 24, 5
SCST_BATCH, SCST_UPDATES = 20, 3  # 60 images, 20 per update
# No decoder can say these words (they are not in the train vocabulary): the validation score is
# 0 every epoch, so epoch 1 is the only one saved and patience 1 stops after epoch 2 of 3.
UNSAYABLE = [["zq xv wy"], ["qq zz"]]
# No dropout: rank 0 starts as one process does, and then the 2 ranks must train as one process.
CFG = dict(decoder="transformer", embed_size=16, hidden_size=32, heads=2, num_layers=1, lr=1e-2, dropout=0.0,
           batch_size=BATCH, epochs=3, patience=1, device="cpu", scst_epochs=1, scst_batch_size=SCST_BATCH,
           scst_samples=3, scst_lr=1e-3)


def scenes(n: int, seed: int, spatial: bool) -> tuple[pd.DataFrame, torch.Tensor]:
    """Captions that depend on the features: colour and shape one-hots (in two cells of a 2x2 map)."""
    g = torch.Generator().manual_seed(seed)
    colour, shape = torch.randint(4, (n,), generator=g), torch.randint(3, (n,), generator=g)
    pooled = torch.randn(n, 16, generator=g) * 0.1
    pooled[torch.arange(n), colour] += 2.0
    pooled[torch.arange(n), 8 + shape] += 2.0
    captions = [[f"a {COLOURS[c]} {SHAPES[s]}", f"there is a {COLOURS[c]} {SHAPES[s]}"] for c, s in zip(colour, shape)]
    rows = pd.DataFrame({"image_id": [f"{seed}_{i}" for i in range(n)], "captions": captions})
    if not spatial:
        return rows, pooled
    maps = torch.zeros(n, 16, 2, 2)
    maps[:, :8, 0, 0], maps[:, 8:, 1, 1] = pooled[:, :8], pooled[:, 8:]
    return rows, maps.half()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def count_updates() -> tuple[dict, object]:
    """Optimizer steps per optimizer class, and a running digest of the parameters after each."""
    seen = {"AdamW": 0, "Adam": 0, "digest": hashlib.sha256()}

    def hook(optimizer, args, kwargs):
        seen[type(optimizer).__name__] += 1
        for group in optimizer.param_groups:
            for p in group["params"]:
                seen["digest"].update(p.detach().numpy().tobytes())
    return seen, register_optimizer_step_post_hook(hook)


def train_tiny(out: Path) -> tuple[dict, dict, list]:
    """Train CFG on the tiny task; returns the summary, the update counts and the checkpoint saves."""
    from pipeline.training import train as train_module
    rows, feats = scenes(N_TRAIN, 0, spatial=True)
    val_rows, val_feats = scenes(len(UNSAYABLE), 1, spatial=True)
    val_rows["captions"] = UNSAYABLE
    vocab = build_vocab([c for caps in rows.captions for c in caps], VocabConfig(min_freq=1))
    saves, save = [], train_module.save_checkpoint

    def recording_save(path, **kw):
        saves.append({"rank": ddp.rank(), "epoch": kw["extra"]["epoch"]})
        save(path, **kw)
    seen, handle = count_updates()
    train_module.save_checkpoint = recording_save
    try:
        summary = train_module.train(rows, feats, val_rows, val_feats, vocab, train_module.TrainConfig(**CFG),
                                     out, {"name": "synthetic"})
    finally:
        train_module.save_checkpoint = save
        handle.remove()
    return summary, seen, saves


def rank_main(local_rank: int, port: int, folder: str) -> None:
    """One rank, with the environment torchrun gives it."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(local_rank),
                      LOCAL_RANK=str(local_rank), WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD))
    with ddp.process_group("cpu"):
        summary, seen, saves = train_tiny(Path(folder) / "model.pt")
        report = {"rank": ddp.rank(), "world": ddp.world_size(), "threads": torch.get_num_threads(),
                  "epochs_run": summary["epochs_run"], "best_epoch": summary["best_epoch"],
                  "losses": [r["train_loss"] for r in summary["history"]], "xe_updates": seen["AdamW"],
                  "scst_updates": seen["Adam"], "digest": seen["digest"].hexdigest(), "saves": saves}
    Path(folder, f"rank{local_rank}.json").write_text(json.dumps(report))


def spawn(fn, args: tuple, nprocs: int, timeout: float) -> None:
    """mp.spawn with a deadline: ranks that disagree deadlock instead of failing."""
    context = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.time() + timeout
    while not context.join(timeout=1):
        if time.time() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {nprocs} ranks did not finish within {timeout} s (a collective waiting forever?)")


def test_two_gloo_ranks_train_in_step_save_once_and_stop_together(tmp_path):
    spawn(rank_main, (free_port(), str(tmp_path)), WORLD, timeout=120)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [r["rank"] for r in reports] == [0, 1] and all(r["world"] == WORLD for r in reports)
    assert all(r["threads"] == max(1, ddp.cpu_cores() // WORLD) for r in reports)  # cores shared, not oversubscribed
    # Early stopping: both ranks ran epochs 1-2 of 3 (patience 1 after the only saved epoch).
    assert [r["epochs_run"] for r in reports] == [2, 2] and [r["best_epoch"] for r in reports] == [1, 1]
    # Trained: the loss over all captions fell, and both ranks report the same (summed) figure.
    losses = reports[0]["losses"]
    assert reports[1]["losses"] == losses and losses[1] < losses[0] * 0.9
    # As many updates an epoch as one process takes (below), on both ranks, and the same weights
    # after every update: the gradients were averaged over the ranks.
    assert [r["xe_updates"] for r in reports] == [2 * UPDATES_PER_EPOCH] * 2
    assert [r["scst_updates"] for r in reports] == [SCST_UPDATES] * 2
    assert reports[0]["digest"] == reports[1]["digest"]
    # One checkpoint, written by rank 0 (the SCST epoch's score, 0 again, did not replace it).
    assert reports[0]["saves"] == [{"rank": 0, "epoch": 1}] and reports[1]["saves"] == []
    ckpt = load_checkpoint(tmp_path / "model.pt")
    assert ckpt["extra"]["epoch"] == 1 and ckpt["decoder"]["decoder"] == "transformer"

    single, seen, saves = train_tiny(tmp_path / "single.pt")  # the same run on one process
    assert (seen["AdamW"], seen["Adam"]) == (2 * UPDATES_PER_EPOCH, SCST_UPDATES)
    assert single["epochs_run"] == 2 and saves == [{"rank": 0, "epoch": 1}]
    # Averaged half-batch gradients are the whole batch's: the same loss curve, to float rounding
    # (the ranks' shares of a batch can differ by a caption's tokens).
    assert losses == pytest.approx([r["train_loss"] for r in single["history"]], rel=1e-4)


def test_shard_gives_each_rank_a_strided_share_and_the_same_number_of_steps(monkeypatch):
    batches = [torch.arange(0, 6), torch.arange(6, 9), torch.arange(9, 12)]
    assert [b.tolist() for b in ddp.shard(batches, min_size=2)] == [b.tolist() for b in batches]  # one process
    monkeypatch.setattr(ddp, "world_size", lambda: 2)
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr(ddp, "rank", lambda rank=rank: rank)
        shares.append([b.tolist() for b in ddp.shard(batches, min_size=2)])
    # The 3-caption batches cannot give 2 ranks 2 captions each: skipped on both ranks.
    assert shares == [[[0, 2, 4]], [[1, 3, 5]]]


def write_project(folder: Path) -> dict:
    """Manifest, pooled features file and vocabulary, as the stages before `train` leave them."""
    from pipeline.data.manifest import write_manifest  # here: the spawned ranks need not import them
    from pipeline.features import _RowWriter
    train_rows, train_feats = scenes(N_TRAIN, 0, spatial=False)
    val_rows, val_feats = scenes(8, 1, spatial=False)
    rows = pd.concat([train_rows.assign(split="train"), val_rows.assign(split="val")], ignore_index=True)
    write_manifest(rows.assign(path=[f"{i}.png" for i in rows.image_id]), folder / "manifest.parquet", folder)
    writer = _RowWriter(folder / "features.parquet", {"name": "synthetic", "feature_dim": 16, "grid_shape": None})
    writer.add(list(rows.image_id), list(rows.image_id), torch.cat([train_feats, val_feats]).numpy(), None)
    writer.close()
    build_vocab([c for caps in train_rows.captions for c in caps], VocabConfig(min_freq=1)).save(folder / "vocab.json")
    return {"--manifest": "manifest.parquet", "--features": "features.parquet", "--vocab": "vocab.json"}


def test_the_train_stage_relaunches_itself_under_torchrun_for_train_nproc(tmp_path):
    paths = write_project(tmp_path)
    train = {"decoder": "show_tell", "embed_size": 16, "hidden_size": 16, "batch_size": BATCH, "epochs": 2,
             "lr": 1e-2, "device": "cpu", "nproc": WORLD}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": train}))
    args = [a for pair in paths.items() for a in pair] + ["--out", "model.pt", "--live", "live"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("WORLD_SIZE", "LOCAL_RANK", "RANK"):  # as if typed at a shell, not under a launcher
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "stages.train", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "relaunching under torchrun" in done.stderr
    assert "rank 0 of 2 (gloo" in done.stderr and "rank 1 of 2 (gloo" in done.stderr
    assert done.stderr.count("epoch 2: loss") == 1  # rank 0 alone reports (and validates)
    assert f"({UPDATES_PER_EPOCH} updates" in done.stderr
    ckpt = load_checkpoint(tmp_path / "model.pt")
    assert ckpt["config"]["nproc"] == WORLD and ckpt["decoder"]["decoder"] == "show_tell"
    live = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert live["epochs_run"] == 2 and live["step"] == 1  # one writer: two epochs, steps 0 and 1


def test_finetune_refuses_several_processes(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from stages import train as stage
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {"finetune": True, "nproc": 2}}))
    monkeypatch.setattr(sys, "argv", ["stages.train", "--params", str(tmp_path / "params.yaml"), "--manifest", "m",
                                      "--features", "f", "--vocab", "v", "--out", str(tmp_path / "model.pt")])
    with pytest.raises(SystemExit, match="train.finetune runs on one process"):
        stage.main()
    assert not (tmp_path / "model.pt").exists()

"""Which spatial layer keeps an object's colour and shape? A per-location linear probe on the
cached spatial maps of the default scenes: each object's own grid cell -> its colour (8 classes)
and its shape (6 classes), trained on some scenes, scored on others.

    python bench/probe_layers.py data/features.parquet data/scenes/captions.jsonl

With features.spatial: s16+s32 the map holds both levels (Lite0: channels 0-111 = the 14x14x112
block average-pooled to 7x7, 112-431 = the 7x7x320 block), so one file probes three choices;
s8+s16+s32 adds the 28x28x40 block pooled to 7x7 in front (channels 0-39): five choices.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.encoders import Preprocess  # noqa: E402
from pipeline.feature_table import load_features  # noqa: E402


def cell_of(x: float, y: float, image_side: int, pre: Preprocess, grid_side: int) -> tuple[int, int]:
    """Grid cell of an image point after resize-shorter-side + centre crop."""
    scale = pre.resize / image_side
    offset = (pre.resize - pre.size) / 2
    to_cell = lambda v: int(np.clip((v * scale - offset) / pre.size * grid_side, 0, grid_side - 1))  # noqa: E731
    return to_cell(y), to_cell(x)


def probe(x_train, y_train, x_test, y_test, n_classes: int, epochs: int = 300) -> float:
    """Multinomial logistic regression (full batch, Adam, standardised inputs): test accuracy."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xt, xs = (x_train - mean) / std, (x_test - mean) / std
    linear = torch.nn.Linear(xt.shape[1], n_classes)
    opt = torch.optim.Adam(linear.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(linear(xt), y_train).backward()
        opt.step()
    with torch.no_grad():
        return float((linear(xs).argmax(1) == y_test).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("features", type=Path)
    p.add_argument("scenes", type=Path, help="captions.jsonl of the scenes generator (objects per image)")
    p.add_argument("--train-scenes", type=int, default=700)
    p.add_argument("--test-scenes", type=int, default=200)
    p.add_argument("--image-side", type=int, default=160)
    args = p.parse_args()
    torch.manual_seed(0)
    table = load_features(args.features, grid=True)
    pre = Preprocess.from_dict(table.meta["preprocess"])
    records = [json.loads(line) for line in args.scenes.read_text().splitlines()]
    by_id = {Path(r["image"]).stem: r for r in records}
    wanted = [i for i in table.ids if Path(i).stem in by_id][: args.train_scenes + args.test_scenes]
    maps = torch.from_numpy(table.lookup(wanted, spatial=True).astype(np.float32))
    colours = sorted({o["colour"] for r in records for o in r["objects"]})
    shapes = sorted({o["shape"] for r in records for o in r["objects"]})
    rows = {"train": ([], [], []), "test": ([], [], [])}
    for n, image_id in enumerate(wanted):
        part = rows["train" if n < args.train_scenes else "test"]
        for obj in by_id[Path(image_id).stem]["objects"]:
            r, c = cell_of(obj["x"], obj["y"], args.image_side, pre, maps.shape[-1])
            part[0].append(maps[n, :, r, c])
            part[1].append(colours.index(obj["colour"]))
            part[2].append(shapes.index(obj["shape"]))
    xtr, ytr_c, ytr_s = torch.stack(rows["train"][0]), torch.tensor(rows["train"][1]), torch.tensor(rows["train"][2])
    xte, yte_c, yte_s = torch.stack(rows["test"][0]), torch.tensor(rows["test"][1]), torch.tensor(rows["test"][2])
    channels = maps.shape[1]
    slices = {f"all {channels} channels ({table.meta.get('spatial')})": slice(0, channels)}
    if table.meta.get("spatial") == "s16+s32" and channels == 432:  # Lite0's two levels
        slices = {"s16 pooled to 7x7 (112)": slice(0, 112), "s32 (320)": slice(112, 432), **slices}
    if table.meta.get("spatial") == "s8+s16+s32" and channels == 472:  # Lite0's three levels
        slices = {"s8 pooled to 7x7 (40)": slice(0, 40), "s16 pooled to 7x7 (112)": slice(40, 152),
                  "s32 (320)": slice(152, 472), "s16+s32 (432)": slice(40, 472), **slices}
    print(f"{len(xtr)} train / {len(xte)} test objects, grid {tuple(maps.shape[1:])}")
    for name, sl in slices.items():
        colour = probe(xtr[:, sl], ytr_c, xte[:, sl], yte_c, len(colours))
        shape = probe(xtr[:, sl], ytr_s, xte[:, sl], yte_s, len(shapes))
        print(f"{name:40s} colour {colour:.3f}  shape {shape:.3f}")


if __name__ == "__main__":
    main()

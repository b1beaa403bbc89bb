"""caption-batch on Ray against the local engine, on the same images, model and cores:

    .venv/bin/python bench/bench_ray.py                  # scenes of data/scenes, models/model.pt, 2 CPUs
    .venv/bin/python bench/bench_ray.py --images DIR --counts 128,384 --cpus 4

Each engine captions a small and a large directory (--counts, the first images of the source),
into fresh OUT files (nothing reused), alternating engines so that a drift of the machine hits
both alike. A run's wall time is start-up + images / rate, so the two sizes give each engine's
rate per image (the slope: what it sustains once running) and its start-up (the intercept: for
the local engine loading the model, for Ray the identity probe and starting the actors; Ray's
own start, ray.init of a local cluster of --cpus CPUs, is timed apart). A run on one batch of
images before them exports the encoder to the runtime cache, so no measured run pays for it. Also reported: images/s
of the whole run on the large directory, and whether both engines wrote the same rows.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_caption import make_photos  # noqa: E402
from pipeline.distributed.ray_engine import caption_directory_ray  # noqa: E402
from pipeline.inference.batch import CaptionConfig, caption_directory  # noqa: E402


def rows(out: Path) -> list[dict]:
    return sorted(pq.read_table(out).to_pylist(), key=lambda r: r["path"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, help="image directory (default: data/scenes/images, else generated JPEGs)")
    p.add_argument("--counts", default="256,768", help="the two directory sizes")
    p.add_argument("--model", type=Path, default=Path("models/model.pt"))
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if not args.model.is_file():
        sys.exit(f"no model at {args.model}: run `dvc repro train` or pass --model")
    small, large = sorted(int(c) for c in args.counts.split(","))
    import ray

    figures: dict = {"cores": os.cpu_count(), "ray_cpus": args.cpus, "ray_version": ray.__version__,
                     "counts": [small, large], "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("CAPTION_PIPELINE_CACHE", str(tmp / "cache"))  # before ray.init: workers inherit it
        source = args.images or (Path("data/scenes/images") if Path("data/scenes/images").is_dir() else None)
        if source is None:
            source = tmp / "photos"
            source.mkdir()
            make_photos(source, large)
        for n in (small, large):
            (tmp / str(n)).mkdir()
            for path in sorted(source.iterdir())[:n]:
                shutil.copy(path, tmp / str(n) / path.name)
        figures["source"] = str(args.images or source)
        cfg = CaptionConfig(batch_size=args.batch_size)
        started = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.WARNING)
        figures["ray_init_seconds"] = round(time.perf_counter() - started, 2)
        warm = tmp / "warm"  # exports the encoder to the runtime cache, starts Ray's workers: not measured
        warm.mkdir()
        for path in sorted((tmp / str(small)).iterdir())[: args.batch_size]:
            shutil.copy(path, warm / path.name)
        caption_directory(warm, tmp / "warm_local.parquet", args.model, cfg)
        caption_directory_ray(warm, tmp / "warm_ray.parquet", args.model, cfg)
        walls: dict = {}
        for n in (small, large):
            for engine, run in (("local", caption_directory), ("ray", caption_directory_ray)):
                started = time.perf_counter()
                summary = run(tmp / str(n), tmp / f"{engine}{n}.parquet", args.model, cfg)
                walls[engine, n] = time.perf_counter() - started
                if engine == "ray":
                    figures[f"ray_{n}"] = summary["ray"]
                print(f"{engine} {n} images: {walls[engine, n]:.1f}s", file=sys.stderr, flush=True)
            figures[f"same_rows_{n}"] = rows(tmp / f"local{n}.parquet") == rows(tmp / f"ray{n}.parquet")
        ray.shutdown()
    for engine in ("local", "ray"):
        rate = (large - small) / (walls[engine, large] - walls[engine, small])
        figures[engine] = {"seconds": [round(walls[engine, n], 2) for n in (small, large)],
                           "images_per_s_sustained": round(rate, 1),
                           "startup_seconds": round(walls[engine, small] - small / rate, 1),
                           f"images_per_s_whole_run_{large}": round(large / walls[engine, large], 1)}
    figures["ray_over_local_sustained"] = round(figures["ray"]["images_per_s_sustained"]
                                                / figures["local"]["images_per_s_sustained"], 3)
    figures["ray_over_local_whole_run"] = round(figures["ray"][f"images_per_s_whole_run_{large}"]
                                                / figures["local"][f"images_per_s_whole_run_{large}"], 3)
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()

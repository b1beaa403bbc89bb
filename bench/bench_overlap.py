"""caption-batch with and without `caption.overlap` (reading and encoding batch k+1 in a thread
while batch k is beam-searched), in interleaved pairs of runs whose order alternates, so that a
slow minute of the machine hits both settings alike. This is the measurement behind
`caption.overlap: auto` (pipeline/inference/batch.py: overlap_for).

    .venv/bin/python bench/bench_overlap.py                 # 8 pairs, 640 scenes, models/model.pt
    .venv/bin/python bench/bench_overlap.py --pairs 4 --count 320 --device cuda
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.inference.batch import CaptionConfig, caption_directory, overlap_for  # noqa: E402
from pipeline.runtime import resolve_device  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=Path("data/scenes/images"))
    p.add_argument("--count", type=int, default=640)
    p.add_argument("--model", type=Path, default=Path("models/model.pt"))
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    runs: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("CAPTION_PIPELINE_CACHE", str(tmp / "cache"))
        images = tmp / "images"
        images.mkdir()
        for path in sorted(args.images.iterdir())[: args.count]:
            shutil.copy(path, images / path.name)
        for pair in range(args.pairs):
            for overlap in (True, False) if pair % 2 == 0 else (False, True):
                out = tmp / "captions.parquet"
                summary = caption_directory(images, out, args.model, CaptionConfig(device=args.device, overlap=overlap))
                out.unlink()  # else the next run reuses every row
                runs[overlap].append(summary["images_per_second"])
            print(f"pair {pair}: overlap {runs[True][-1]:.1f}, no overlap {runs[False][-1]:.1f} images/s", flush=True)
    for overlap, values in runs.items():
        print(f"{'overlap' if overlap else 'no overlap':11s} median {statistics.median(values):6.1f}  "
              f"best {max(values):6.1f}  {values}")
    faster = sum(without > with_ for with_, without in zip(runs[True], runs[False]))
    auto = overlap_for(resolve_device(args.device))
    print(f"no overlap faster in {faster} of {args.pairs} pairs; caption.overlap: auto here = {auto}")


if __name__ == "__main__":
    main()

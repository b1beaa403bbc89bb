"""Encoder runtimes side by side, in one run, on the same images and weights:

  1. encoder only, per runtime: forward passes over preprocessed tensors already in memory;
  2. the features stage (extract_features from the files, workers decoding), per runtime, and
     for the default runtime every combination of decoding workers and encoder threads, and
     the default without reading the next batch ahead in a thread;
  3. caption-batch end to end with the default runtime (and with torch; and with the other
     setting of caption.overlap than its default), its ratio to the encoder-only figure of the
     runtime it uses, and the seeds' per-image loop;
  4. how far each runtime's features are from torch's (max abs) and how many captions differ;
  5. the figures the targets are ratios of (encoder only at batch 32, the features stage with
     torch and with the default runtime, caption-batch with its defaults, the seeds' loop),
     again in --rounds interleaved rounds: each ratio per round and its median, so one slow
     minute of the machine does not decide a target.

    .venv/bin/python bench/bench_runtimes.py                          # 640 scenes of data/scenes
    .venv/bin/python bench/bench_runtimes.py --images DIR --count 256 --model models/model.pt

Timings on a 2-core machine move ~30% between runs: compare the ratios of one run.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest.mock import patch

import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pipeline.features as features_module  # noqa: E402
from bench.bench_caption import make_bench_checkpoint, make_photos, naive_loop, print_figures  # noqa: E402
from pipeline.config import load_section  # noqa: E402
from pipeline.data.images import load_image_tensor  # noqa: E402
from pipeline.encoders import EncoderConfig  # noqa: E402
from pipeline.encoders.runtimes import EXPORTED, installed  # noqa: E402
from pipeline.feature_table import load_features  # noqa: E402
from pipeline.features import FeaturesConfig, extract_features  # noqa: E402
from pipeline.inference.batch import CaptionConfig, caption_directory  # noqa: E402
from pipeline.inference.listing import list_images  # noqa: E402
from pipeline.inference.captioner import Captioner  # noqa: E402


def encoder_only(captioner: Captioner, tensors: torch.Tensor, batch_size: int) -> float:
    captioner.encode(tensors[:batch_size])  # warm-up
    start = time.perf_counter()
    for lo in range(0, len(tensors), batch_size):
        captioner.encode(tensors[lo: lo + batch_size])
    return len(tensors) / (time.perf_counter() - start)


SPATIAL = load_section("params.yaml", "features", FeaturesConfig).spatial  # the default map the stage stores


def features_stage(items, runtime: str, workers: int, threads: int, batch_size: int, out: Path) -> dict:
    cfg = FeaturesConfig(batch_size=batch_size, num_workers=workers, threads=threads, device="cpu",
                         spatial=SPATIAL, runtime=runtime)
    if out.exists():
        out.unlink()
    stats = extract_features(items, EncoderConfig(), cfg, out, out.with_suffix(".errors.json"))
    return {"img_s": stats["images_per_s"], "runtime": stats["runtime"], "seconds": stats["seconds"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, help="image directory (default: data/scenes/images, else generated JPEGs)")
    p.add_argument("--count", type=int, default=640, help="images used from it")
    p.add_argument("--model", type=Path, help="checkpoint (default: models/model.pt if present)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--naive-count", type=int, default=60)
    p.add_argument("--combos", default="0:2,1:2,2:1,2:2", help="workers:threads pairs for the features stage")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the target figures (part 5)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    runtimes = ["torch", *[r for r in EXPORTED if installed(r)]]
    cores = os.cpu_count()
    figures: dict = {"cores": cores, "runtimes": runtimes}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("CAPTION_PIPELINE_CACHE", str(tmp / "cache"))
        source = args.images or (Path("data/scenes/images") if Path("data/scenes/images").is_dir() else None)
        images = tmp / "images"
        images.mkdir()
        if source is None:
            make_photos(images, args.count)
        else:
            for path in sorted(source.iterdir())[: args.count]:
                shutil.copy(path, images / path.name)
        paths = [f.path for f in list_images(images, CaptionConfig().patterns)]
        items = [(path.stem, path) for path in paths]
        model = args.model or (Path("models/model.pt") if Path("models/model.pt").is_file() else None)
        model = model or make_bench_checkpoint(tmp / "bench_model.pt", 3000)
        figures.update(images=len(paths), source=str(source or "generated 640x480 JPEGs"), model=str(model))

        # 1. encoder only (threads = all cores, as when nothing else runs)
        torch.set_num_threads(cores)
        captioners = {r: Captioner.from_checkpoint(model, runtime=r, threads=cores) for r in runtimes}
        tensors = torch.stack([load_image_tensor(p, captioners["torch"].preprocess)[0] for p in paths])
        for runtime, captioner in captioners.items():
            for batch in (1, 8, args.batch_size):
                figures[f"encoder_only_{runtime}_b{batch}"] = round(encoder_only(captioner, tensors, batch), 1)
        # Raw float32 outputs (pooled and map), before the float16 rounding of the cache.
        base = captioners["torch"].runtime(tensors[:64])
        for runtime in runtimes[1:]:
            out = captioners[runtime].runtime(tensors[:64])
            figures[f"fp32_max_abs_diff_{runtime}"] = max(float((o - w).abs().max()) for o, w in zip(out, base))
        # Decoding alone (the captioner's beam search on features already computed), per batch.
        feats = captioners["torch"].encode(tensors[: args.batch_size * 4])
        captioners["torch"].decode_features(feats[: args.batch_size])  # warm-up
        start = time.perf_counter()
        for lo in range(0, len(feats), args.batch_size):
            captioners["torch"].decode_features(feats[lo: lo + args.batch_size])
        figures["decode_only_beam"] = round(len(feats) / (time.perf_counter() - start), 1)

        # 2. features stage per runtime (default workers/threads), then the combinations
        default = FeaturesConfig()
        for runtime in runtimes:
            stats = features_stage(items, runtime, default.num_workers, default.threads, args.batch_size,
                                   tmp / f"features_{runtime}.parquet")
            figures[f"features_{runtime}"] = stats["img_s"]
        for runtime in ("auto", "torch"):
            for combo in args.combos.split(","):
                workers, threads = (int(x) for x in combo.split(":"))
                stats = features_stage(items, runtime, workers, threads, args.batch_size, tmp / "combo.parquet")
                figures[f"features_{runtime}_w{workers}_t{threads}"] = stats["img_s"]
        # The same default, the next batch not read ahead in a thread (what the stage did before)
        with patch.object(features_module, "read_ahead", lambda loader: loader):
            stats = features_stage(items, "auto", default.num_workers, default.threads, args.batch_size,
                                   tmp / "no_read_ahead.parquet")
        figures["features_auto_no_read_ahead"] = stats["img_s"]
        tables = {r: load_features(tmp / f"features_{r}.parquet", grid=True) for r in runtimes}
        ids = list(tables["torch"].ids)
        for runtime in runtimes[1:]:
            diff = abs(tables[runtime].lookup(ids, spatial=True).astype("float32")
                       - tables["torch"].lookup(ids, spatial=True).astype("float32")).max()
            figures[f"features_max_abs_diff_{runtime}"] = float(diff)

        # 3. caption-batch end to end, default settings, and the seeds' loop
        captions = {}
        for runtime in dict.fromkeys(["auto", "torch"]):
            cfg = CaptionConfig(batch_size=args.batch_size, device="cpu", runtime=runtime)
            out = tmp / f"captions_{runtime}.parquet"
            summary = caption_directory(images, out, model, cfg)
            used = summary["settings"]["runtime"]
            figures[f"caption_batch_{runtime}"] = summary["images_per_second"]
            figures[f"caption_batch_{runtime}_uses"] = used
            captions[runtime] = dict(zip(*pq.read_table(out, columns=["path", "caption"]).to_pydict().values()))
        for combo in args.combos.split(","):
            workers, threads = (int(x) for x in combo.split(":"))
            for runtime in ("auto", "torch"):
                cfg = CaptionConfig(batch_size=args.batch_size, device="cpu", num_workers=workers, threads=threads,
                                    runtime=runtime)
                summary = caption_directory(images, tmp / f"combo_{runtime}_{workers}_{threads}.parquet", model, cfg)
                figures[f"caption_batch_{runtime}_w{workers}_t{threads}"] = summary["images_per_second"]
        # The other overlap setting than the default's (caption.overlap: auto = off on a CPU)
        other = not summary["overlap"]
        cfg = CaptionConfig(batch_size=args.batch_size, device="cpu", runtime="auto", overlap=other)
        summary = caption_directory(images, tmp / "other_overlap.parquet", model, cfg)
        figures[f"caption_batch_auto_{'overlap' if other else 'no_overlap'}"] = summary["images_per_second"]
        same = sum(captions["auto"][k] == captions["torch"].get(k) for k in captions["auto"])
        figures["captions_identical_auto_vs_torch"] = f"{same}/{len(captions['auto'])}"
        used = figures["caption_batch_auto_uses"]
        figures["caption_batch_over_its_encoder_only"] = round(
            figures["caption_batch_auto"] / figures[f"encoder_only_{used}_b{args.batch_size}"], 3)
        torch.set_num_threads(cores)
        figures["naive_loop"] = round(naive_loop(captioners["torch"], paths[: args.naive_count],
                                                 CaptionConfig.max_len), 1)
        figures["caption_batch_over_naive"] = round(figures["caption_batch_auto"] / figures["naive_loop"], 2)
        figures["features_auto_over_torch"] = round(figures[f"features_{used}"] / figures["features_torch"], 2)

        # 5. the target figures again, interleaved rounds
        rounds: dict[str, list] = {}
        for _ in range(args.rounds):
            torch.set_num_threads(cores)
            one = {"encoder_only": encoder_only(captioners[used], tensors, args.batch_size),
                   "naive_loop": naive_loop(captioners["torch"], paths[: args.naive_count], CaptionConfig.max_len)}
            for runtime in dict.fromkeys(["torch", used]):
                one[f"features_{runtime}"] = features_stage(items, runtime, default.num_workers, default.threads,
                                                            args.batch_size, tmp / "round_features.parquet")["img_s"]
            one["caption_batch"] = caption_directory(images, tmp / "round_captions.parquet", model,
                                                     CaptionConfig(batch_size=args.batch_size, device="cpu")
                                                     )["images_per_second"]
            (tmp / "round_captions.parquet").unlink()  # else the next round reuses every row
            one["features_over_torch"] = one[f"features_{used}"] / one["features_torch"]
            one["caption_batch_over_encoder_only"] = one["caption_batch"] / one["encoder_only"]
            one["caption_batch_over_naive"] = one["caption_batch"] / one["naive_loop"]
            for key, value in one.items():
                rounds.setdefault(key, []).append(round(value, 3 if "_over_" in key else 1))
        for key, values in rounds.items():
            figures[f"rounds_{key}"] = values
            figures[f"rounds_{key}_median"] = statistics.median(values)

    print_figures(figures, args.json)


if __name__ == "__main__":
    main()

"""The GPU check, prepared for one short run on a lent NVIDIA H100 (no internet there), on the
same images (generated 640x480 JPEGs, or --images DIR) and weights. Prints one `name value` line
per figure (a section that fails prints `<section>_error` and the rest still run; a CUDA-only
figure reads `skipped: ...` without CUDA) and writes them as JSON (--json, default
$OUT/bench_gpu.json when OUT is set):

  1. device: the GPU's name and the torch version (or cpu);
  2. encoder only: the default encoder as the features stage wraps it (torch runtime, autocast,
     channels_last) on preprocessed tensors already on the device, fp32 and bf16, batch 64 and 256;
  3. JPEG decoding + preprocessing alone: PIL as the pipeline decodes (one process, then the
     loader's workers) against torchvision.io.decode_jpeg batched on the GPU with the resize, crop
     and normalisation there too (also run on the CPU, so that code is smoke-tested without CUDA);
  4. the features stage (extract_features: workers decode, precision auto = bf16 on CUDA);
  5. caption-batch end to end (caption_directory) and its ratios to the encoder-only figure of its
     precision (target >= 0.8 on an H100) and to the seeds' per-image loop (target >= 20); then
     with the other caption.overlap setting than its default (auto: overlap on a GPU);
  6. the seeds' per-image loop (bench_caption.naive_loop);
  7. one cross-entropy and one SCST training epoch (train() with params.yaml's train section,
     epochs 1) on synthetic features of the default spatial shape and scene captions for 4343
     train images x 5 captions (the default data set's size), or the real cache with --real.

On the device (estimated 2-4 minutes, not yet measured; models/model.pt, ignored by git, is used
when carried there, else a bench checkpoint with a random decoder: the worst case for decoding):
    python bench/bench_gpu.py --count 2048 --json $OUT/bench_gpu.json
CPU smoke test of every path but the CUDA-only ones:
    .venv/bin/python bench/bench_gpu.py --device cpu --count 8 --quick
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
import torchvision
import torchvision.transforms.functional as TF
from torchvision.io import ImageReadMode, decode_jpeg, read_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_caption import make_bench_checkpoint, make_photos, naive_loop, print_figures  # noqa: E402
from pipeline.config import load_section  # noqa: E402
from pipeline.data.images import load_image_tensor, make_loader  # noqa: E402
from pipeline.data.manifest import read_manifest  # noqa: E402
from pipeline.data.multilingual import build_caption_vocab  # noqa: E402
from pipeline.data.scene_text import captions as scene_captions  # noqa: E402
from pipeline.data.scenes import SceneConfig, sample_scene  # noqa: E402
from pipeline.data.vocab import VocabConfig  # noqa: E402
from pipeline.data.vocabularies import load_vocab  # noqa: E402
from pipeline.encoders import EncoderConfig, build_encoder  # noqa: E402
from pipeline.encoders.feature_maps import SpatialEncoder  # noqa: E402
from pipeline.feature_table import load_features  # noqa: E402
from pipeline.features import FeaturesConfig, build_features_encoder, extract_features  # noqa: E402
from pipeline.inference.batch import CaptionConfig, caption_directory  # noqa: E402
from pipeline.inference.listing import list_images  # noqa: E402
from pipeline.inference.captioner import Captioner  # noqa: E402
from pipeline.runtime import resolve_device  # noqa: E402
from pipeline.training.train import TrainConfig, train  # noqa: E402

PARAMS = ROOT / "params.yaml"
SPATIAL = load_section(PARAMS, "features", FeaturesConfig).spatial  # the map the features stage stores
NO_CUDA = "skipped: CUDA not available"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rate(run, n: int, device: torch.device, min_seconds: float, warm=None) -> float:
    """Items/s of `run` (n items a pass) after one warm-up call, over passes lasting >= min_seconds."""
    (warm or run)()
    sync(device)
    passes, start = 0, time.perf_counter()
    while True:
        run()
        sync(device)
        passes += 1
        if time.perf_counter() - start >= min_seconds:
            return round(passes * n / (time.perf_counter() - start), 1)


def prepare_images(args, folder: Path) -> list[Path]:
    """--count images in `folder`: copies from --images, else JPEGs generated on every core."""
    if args.images:
        for i, path in enumerate(f.path for f in list_images(args.images, CaptionConfig().patterns)):
            if i == args.count:
                break
            shutil.copy(path, folder / f"{i:05d}_{path.name}")
    else:
        parts = max(1, min(os.cpu_count() or 1, args.count // 64))
        counts = [args.count // parts + (k < args.count % parts) for k in range(parts)]
        for k in range(parts):
            (folder / f"part{k:02d}").mkdir()
        with ProcessPoolExecutor(parts) as pool:  # one seed per part: every image differs
            jobs = [pool.submit(make_photos, folder / f"part{k:02d}", counts[k], seed=k) for k in range(parts)]
            for job in jobs:
                job.result()
    return [f.path for f in list_images(folder, CaptionConfig().patterns)]


def preprocessed(ctx) -> torch.Tensor:
    """Every image as the loader prepares it (decoded by workers: this is not what is timed)."""
    loader = make_loader(ctx.paths, ctx.preprocess, ctx.batch, ctx.workers, pin_memory=False)
    return torch.cat([b.images for b in loader])


def device_info(ctx) -> dict:
    name = torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "cpu"
    return {"device": name, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cpu_cores": os.cpu_count(), "images": len(ctx.paths), "model": str(ctx.model)}


def encoder_only(ctx) -> dict:
    x, out = preprocessed(ctx).to(ctx.device), {}
    for precision in ("fp32", "bf16"):
        cfg = FeaturesConfig(device=str(ctx.device), precision=precision, spatial=SPATIAL, runtime="torch")
        runtime = build_features_encoder(EncoderConfig(), cfg, ctx.device)[1]
        for b in ctx.encoder_batches:
            out[f"encoder_only_{precision}_b{b}"] = rate(
                lambda: [runtime(x[lo: lo + b]) for lo in range(0, len(x), b)], len(x), ctx.device, ctx.min_s)
    return out


def tensor_preprocess(raw: list[torch.Tensor], preprocess, device: str) -> torch.Tensor:
    """JPEG bytes -> normalised batch with torchvision on `device`: the Preprocess steps on tensors."""
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of TorchCodec
        warnings.simplefilter("ignore")
        images = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
    mode, side = TF.InterpolationMode(preprocess.interpolation), [preprocess.size] * 2
    crops = [TF.center_crop(TF.resize(im, preprocess.resize, interpolation=mode, antialias=True), side)
             for im in images]
    return TF.normalize(torch.stack(crops).float().div_(255.0), list(preprocess.mean), list(preprocess.std))


def jpeg_decoding(ctx) -> dict:
    paths = [p for p in ctx.paths if p.suffix.lower() in (".jpg", ".jpeg")]
    n, pre, b = len(paths), ctx.preprocess, ctx.batch
    out = {"decode_jpegs": n, "decode_pil_1proc": rate(
        lambda: [load_image_tensor(p, pre) for p in paths], n, torch.device("cpu"), 0,
        warm=lambda: [load_image_tensor(p, pre) for p in paths[:4]])}
    out[f"decode_pil_loader_w{ctx.workers}"] = rate(  # worker start-up included, as the stages pay it
        lambda: [x for x in make_loader(paths, pre, b, ctx.workers, pin_memory=False)], n, torch.device("cpu"), 0)
    reference = torch.stack([load_image_tensor(p, pre)[0] for p in paths[:8]])
    for device in ("cpu", "cuda"):
        if device == "cuda" and ctx.device.type != "cuda":
            out["decode_torchvision_cuda"] = out["decode_max_abs_diff_cuda_vs_pil"] = NO_CUDA
            print(f"[jpeg decoding] GPU decode {NO_CUDA}", file=sys.stderr)
            continue
        def batches(first: int = n) -> list[torch.Tensor]:  # files read in the timing too, as PIL's are
            return [tensor_preprocess([read_file(str(p)) for p in paths[lo: min(lo + b, first)]], pre, device)
                    for lo in range(0, first, b)]
        out[f"decode_torchvision_{device}"] = rate(batches, n, torch.device(device), ctx.min_s,
                                                   warm=lambda: batches(1))
        got = tensor_preprocess([read_file(str(p)) for p in paths[:8]], pre, device).cpu()
        out[f"decode_max_abs_diff_{device}_vs_pil"] = round(float((got - reference).abs().max()), 4)
    if ctx.device.type == "cuda":
        best_pil = max(v for k, v in out.items() if k.startswith("decode_pil"))
        out["gpu_decode_faster_than_pil"] = out["decode_torchvision_cuda"] > best_pil
    return out


def features_stage(ctx) -> dict:
    cfg = FeaturesConfig(batch_size=ctx.batch, num_workers=ctx.workers, device=str(ctx.device),
                         precision="auto", spatial=SPATIAL, runtime="torch")
    items = [(str(p.relative_to(ctx.images)), p) for p in ctx.paths]
    out = ctx.tmp / "features.parquet"
    started = time.perf_counter()
    stats = extract_features(items, EncoderConfig(), cfg, out, ctx.tmp / "feature_errors.json")
    return {"features_img_s": stats["images_per_s"], "features_precision": stats["precision"],
            "features_end_to_end_img_s": round(len(items) / (time.perf_counter() - started), 1)}


def caption_batch(ctx) -> dict:
    cfg = CaptionConfig(batch_size=ctx.caption_batch, num_workers=ctx.workers, device=str(ctx.device),
                        runtime="torch")
    summary = caption_directory(ctx.images, ctx.tmp / "captions.parquet", ctx.model, cfg)
    # caption.overlap: auto overlaps on a GPU by a rule of thumb: the other setting, to check it
    other = caption_directory(ctx.images, ctx.tmp / "captions_other.parquet", ctx.model,
                              replace(cfg, overlap=not summary["overlap"]))
    return {"caption_batch_img_s": summary["images_per_second"], "caption_batch_seconds": summary["seconds"],
            "caption_batch_precision": summary["settings"]["precision"], "caption_batch_batch": ctx.caption_batch,
            "caption_batch_overlap": summary["overlap"], "caption_batch_other_overlap_img_s": other["images_per_second"]}


def seeds_loop(ctx) -> dict:
    captioner = Captioner.from_checkpoint(ctx.model, device=str(ctx.device), runtime="torch",
                                          max_len=CaptionConfig.max_len)
    paths = ctx.paths[: ctx.naive_count]
    naive_loop(captioner, paths[:2], CaptionConfig.max_len)  # warm-up: kernels, allocator
    return {"naive_loop_img_s": round(naive_loop(captioner, paths, CaptionConfig.max_len), 2),
            "naive_loop_images": len(paths)}


def ratios(figures: dict) -> dict:
    precision = figures.get("caption_batch_precision")
    encoder = [v for k, v in figures.items() if k.startswith(f"encoder_only_{precision}_b")]
    out = {}
    if "caption_batch_img_s" in figures and encoder:  # against the best batch size of its precision
        out["caption_batch_over_encoder_only"] = round(figures["caption_batch_img_s"] / max(encoder), 3)
    if "caption_batch_img_s" in figures and "naive_loop_img_s" in figures:
        out["caption_batch_over_naive_loop"] = round(figures["caption_batch_img_s"] / figures["naive_loop_img_s"], 2)
    return out


def synthetic_data(n_train: int, n_val: int) -> tuple:
    """Scene captions (5 an image, as the default data set) and random maps of the default shape."""
    scenes, rng = load_section(PARAMS, "scenes", SceneConfig), np.random.default_rng(0)
    caps = [scene_captions(rng, sample_scene(rng, scenes, False), scenes.size_mention) for _ in range(n_train + n_val)]
    rows = pd.DataFrame({"image_id": [f"img{i}" for i in range(len(caps))], "captions": caps})
    train_caps = [c for cs in caps[:n_train] for c in cs]
    vocab = build_caption_vocab(train_caps, ["en"] * len(train_caps), load_section(PARAMS, "vocab", VocabConfig))
    shape = SpatialEncoder(build_encoder(EncoderConfig()), SPATIAL).spatial_shape()
    feats = torch.randn(len(caps), *shape, generator=torch.Generator().manual_seed(0)).half()
    return (rows[:n_train].reset_index(drop=True), feats[:n_train], rows[n_train:].reset_index(drop=True),
            feats[n_train:], vocab, {"name": "synthetic", "grid_shape": shape, "spatial": SPATIAL})


def real_data() -> tuple:
    """The DVC cache's train/val rows, maps and vocabulary (what stages/train.py reads)."""
    manifest, _ = read_manifest(ROOT / "data/manifest.parquet")
    table = load_features(ROOT / "data/features.parquet", grid=True)
    manifest = manifest[manifest.image_id.isin(set(table.ids))]
    rows = [manifest[manifest.split == s].reset_index(drop=True) for s in ("train", "val")]
    feats = [torch.from_numpy(table.lookup(list(r.image_id), spatial=True)) for r in rows]
    return rows[0], feats[0], rows[1], feats[1], load_vocab(ROOT / "data/vocab.json"), table.meta


def training(ctx) -> dict:
    cfg = replace(load_section(PARAMS, "train", TrainConfig), epochs=1, scst_epochs=0 if ctx.args.no_scst else 1,
                  device=str(ctx.device), nproc=1)
    real = ctx.args.real and all((ROOT / f).is_file() for f in
                                 ("data/features.parquet", "data/manifest.parquet", "data/vocab.json"))
    train_rows, train_feats, val_rows, val_feats, vocab, info = real_data() if real else synthetic_data(
        ctx.train_images, max(2, ctx.train_images // 8))
    pairs = sum(map(len, train_rows.captions))  # an epoch's pairs when train.captions_per_language is 0
    source = "real" if real else "synthetic (--real: data/ files missing)" if ctx.args.real else "synthetic"
    out = {"train_data": source, "train_images": len(train_rows),
           "train_caption_pairs": pairs, "train_feature_shape": list(train_feats.shape[1:])}
    records: list[dict] = []
    try:
        train(train_rows, train_feats, val_rows, val_feats, vocab, cfg, ctx.tmp / "train.pt", info, records.append)
    except Exception:
        if not records:  # the cross-entropy epoch itself failed
            raise
        out["train_scst_error"] = traceback.format_exc(limit=2).strip().splitlines()[-1]
    xe = records[0]
    out.update(train_xe_epoch_s=round(xe["train_seconds"], 2),
               train_xe_pairs_per_s=round(pairs / xe["train_seconds"], 1),
               train_xe_validation_s=round(xe["epoch_seconds"] - xe["train_seconds"], 2))
    if ctx.args.no_scst:
        out["train_scst_epoch_s"] = "not run (--no-scst)"
    elif len(records) > 1:
        scst = records[1]
        out.update(train_scst_epoch_s=round(scst["train_seconds"], 2),
                   train_scst_images_per_s=round(len(train_rows) / scst["train_seconds"], 1))
    return out


SECTIONS = [("device", device_info), ("encoder_only", encoder_only), ("jpeg_decoding", jpeg_decoding),
            ("features", features_stage), ("caption_batch", caption_batch), ("naive_loop", seeds_loop),
            ("training", training)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (the check) or cpu (the smoke test)")
    p.add_argument("--count", type=int, default=2048, help="images (generated, or the first of --images)")
    p.add_argument("--images", type=Path, help="directory of images instead of generated 640x480 JPEGs")
    p.add_argument("--model", type=Path, help="checkpoint (default: models/model.pt if present, else a bench one)")
    p.add_argument("--quick", action="store_true", help="CPU smoke sizes: batch 8, no workers, 64 train images")
    p.add_argument("--train-images", type=int, help="synthetic train images (default 4343; --quick: 64)")
    p.add_argument("--real", action="store_true", help="train on data/features.parquet, manifest and vocab")
    p.add_argument("--no-scst", action="store_true", help="skip the SCST epoch")
    p.add_argument("--json", type=Path, default=Path(os.environ["OUT"]) / "bench_gpu.json" if os.environ.get("OUT")
                   else None, help="also write the figures here (default: $OUT/bench_gpu.json when OUT is set)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    started = time.perf_counter()
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = tmp / "images"
        images.mkdir()
        model = args.model or (ROOT / "models/model.pt" if (ROOT / "models/model.pt").is_file() else None)
        q = args.quick
        ctx = SimpleNamespace(
            args=args, tmp=tmp, images=images, device=resolve_device(args.device), paths=prepare_images(args, images),
            model=model or make_bench_checkpoint(tmp / "bench_model.pt", 3000),
            preprocess=build_encoder(EncoderConfig()).preprocess, batch=8 if q else 256,
            encoder_batches=(8,) if q else (64, 256), caption_batch=8 if q else 128, workers=0 if q else 4,
            naive_count=4 if q else 64, train_images=args.train_images or (64 if q else 4343), min_s=0 if q else 1.0)
        for name, section in SECTIONS:
            t0 = time.perf_counter()
            try:
                figures.update(section(ctx))
            except Exception as err:  # noqa: BLE001 - one broken section must not hide the others
                traceback.print_exc()
                figures[f"{name}_error"] = f"{type(err).__name__}: {err}"
            figures[f"{name}_wall_s"] = round(time.perf_counter() - t0, 1)
        figures.update(ratios(figures))
    figures["total_wall_s"] = round(time.perf_counter() - started, 1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
    print_figures(figures, args.json)


if __name__ == "__main__":
    main()

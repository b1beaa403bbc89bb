"""Benchmark: how close does feature extraction from image files come to the encoder's own speed?

Measures on the same images and batch size:
  1. encoder only: forward passes on preprocessed tensors already in memory;
  2. decode only: load_rgb + preprocess in this one process (what one DataLoader worker does);
  3. pipeline: extract_features from the files (DataLoader workers, JPEG draft), encode loop only
     and end to end (hashing, encoder build and Parquet writing included);
and prints pipeline / encoder-only. A ratio near 1 means decoding is hidden behind the forward pass.

    python -m bench.bench_features                       # 256 generated 640x480 photo-like JPEGs
    python -m bench.bench_features --image-dir DIR --n-images 512 --num-workers 4
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image

from pipeline.data.images import load_image_tensor
from pipeline.encoders import EncoderConfig, build_encoder
from pipeline.features import FeaturesConfig, extract_features
from pipeline.runtime import autocast_dtype, resolve_device

# Real photographs shipped inside scikit-image, so generated images compress and decode like photos.
_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry")


def generate_photos(out_dir: Path, n: int, size: tuple[int, int] = (640, 480), seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    bases = [Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in _PHOTOS]
    paths = []
    for i in range(n):
        base = bases[i % len(bases)]
        w, h = base.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        image = base.crop((x, y, x + cw, y + ch)).resize(size, Image.BICUBIC)
        jitter = rng.uniform(0.8, 1.2, size=3)  # per-channel gain: every file different
        pixels = np.clip(np.asarray(image, np.float32) * jitter, 0, 255).astype(np.uint8)
        paths.append(out_dir / f"photo_{i:05d}.jpg")
        Image.fromarray(pixels).save(paths[-1], quality=90)
    return paths


def bench(paths: list[Path], encoder_cfg: EncoderConfig, cfg: FeaturesConfig, work_dir: Path) -> dict[str, float]:
    device = resolve_device(cfg.device)
    amp = autocast_dtype(cfg.precision, device)
    encoder = build_encoder(encoder_cfg).optimize_for_inference().to(device)  # as extract_features does
    n = len(paths)

    start = time.perf_counter()
    batch = torch.stack([load_image_tensor(p, encoder.preprocess)[0] for p in paths[: cfg.batch_size]])
    decode_per_s = len(batch) / (time.perf_counter() - start)

    encoder.to(memory_format=torch.channels_last)  # as extract_features does
    x = batch.to(device).contiguous(memory_format=torch.channels_last)
    n_batches = max(1, round(n / cfg.batch_size))
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        encoder.forward_grid(x)  # warm-up: kernel selection, allocator
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(n_batches):
            encoder.forward_grid(x).float().mean(dim=(2, 3)).cpu()
        encoder_per_s = n_batches * len(x) / (time.perf_counter() - start)

    stats = extract_features([(p.stem, p) for p in paths], encoder_cfg, cfg,
                             work_dir / "features.parquet", work_dir / "errors.json")
    return {"images": n, "encoder_only_per_s": encoder_per_s, "decode_one_process_per_s": decode_per_s,
            "pipeline_per_s": stats["images_per_s"], "end_to_end_per_s": n / stats["seconds"],
            "ratio": stats["images_per_s"] / encoder_per_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-dir", type=Path, help="use these JPEG/PNG files instead of generated ones")
    p.add_argument("--n-images", type=int, default=256)
    p.add_argument("--encoder", default="efficientnet_lite0")
    p.add_argument("--weights", default="pretrained")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--torch-threads", type=int, default=0, help="intra-op threads (0 = torch's default)")
    args = p.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    cfg = FeaturesConfig(batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
                         precision=args.precision)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.image_dir:
            paths = sorted(q for q in args.image_dir.iterdir() if q.suffix.lower() in (".jpg", ".jpeg", ".png"))
            paths = paths[: args.n_images]
        else:
            paths = generate_photos(work, args.n_images)
            logging.info("generated %d photo-like JPEGs in %s", len(paths), work)
        result = bench(paths, EncoderConfig(args.encoder, args.weights), cfg, work)
    print(f"encoder {args.encoder} ({args.weights}), device {resolve_device(args.device)}, "
          f"batch {args.batch_size}, workers {args.num_workers}, torch threads {torch.get_num_threads()}, "
          f"{result['images']} images")
    print(f"  encoder only (tensors in memory): {result['encoder_only_per_s']:8.1f} images/s")
    print(f"  decode+preprocess, one process:   {result['decode_one_process_per_s']:8.1f} images/s")
    print(f"  pipeline from files (encode loop):{result['pipeline_per_s']:8.1f} images/s")
    print(f"  pipeline end to end:              {result['end_to_end_per_s']:8.1f} images/s")
    print(f"  ratio pipeline / encoder only:    {result['ratio']:8.2f}")


if __name__ == "__main__":
    main()

"""Throughput of caption-batch against its two bounds, on the same images and weights:

  (a) encoder only: forward passes over preprocessed tensors already in memory;
  (b) caption-batch end to end: list, read, hash, decode JPEGs (worker processes), encode,
      beam-search, write Parquet;
  (c) the seeds' naive loop: open one image, encode it alone, greedy-decode with .item() per step.

    .venv/bin/python bench/bench_caption.py                 # 200 generated 640x480 JPEGs
    .venv/bin/python bench/bench_caption.py --images DIR --model models/model.pt

Without --model (and no models/model.pt), the weights are the pretrained efficientnet_lite0
plus a random decoder of the default size over a --vocab-size word vocabulary, whose captions
always run the full --max-len steps: throughput depends on the decoder's size and caption
lengths, not on what it learned, so this is the worst case for the decoding share.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.checkpoint import save_checkpoint  # noqa: E402
from pipeline.data.images import load_image_tensor  # noqa: E402
from pipeline.data.vocab import Vocab  # noqa: E402
from pipeline.decoders import DecoderConfig, ShowTell  # noqa: E402
from pipeline.encoders import EncoderConfig, build_encoder  # noqa: E402
from pipeline.inference.batch import CaptionConfig, caption_directory  # noqa: E402
from pipeline.inference.listing import list_images  # noqa: E402
from pipeline.inference.captioner import Captioner  # noqa: E402


def make_photos(directory: Path, count: int, size: tuple[int, int] = (640, 480), seed: int = 0) -> None:
    """Photo-like JPEGs: smooth colour fields, a few blobs, sensor noise (~50-100 KB each)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.float32)
        for _ in range(4):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(20, 120)
            mask = ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)[..., None]
            pixels = np.where(mask, rng.uniform(0, 255, 3).astype(np.float32), pixels)
        pixels += rng.normal(0, 6, pixels.shape).astype(np.float32)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(directory / f"photo_{i:05d}.jpg", quality=90)


def make_bench_checkpoint(path: Path, vocab_size: int) -> Path:
    encoder = build_encoder(EncoderConfig("efficientnet_lite0", "pretrained"))
    vocab = Vocab(f"word{i}" for i in range(vocab_size - 4))
    torch.manual_seed(0)
    decoder = ShowTell(encoder.feature_dim, len(vocab), DecoderConfig())
    with torch.no_grad():  # never <end>: every caption runs all max_len steps (the worst case)
        decoder.head.bias[vocab.end_id] = -30.0
    save_checkpoint(path, decoder_state=decoder.state_dict(), decoder=decoder.describe(), vocab=vocab.to_list(),
                    encoder={"name": encoder.name, "weights": "pretrained", "fingerprint": encoder.fingerprint,
                             "preprocess": encoder.preprocess.to_dict(), "feature_dim": encoder.feature_dim},
                    config={})
    return path


@torch.inference_mode()
def encoder_only(captioner: Captioner, paths: list[Path], batch_size: int) -> float:
    tensors = torch.stack([load_image_tensor(p, captioner.preprocess)[0] for p in paths])
    captioner.encode(tensors[:batch_size])  # warm-up: allocator, kernels
    start = time.perf_counter()
    for lo in range(0, len(tensors), batch_size):
        captioner.encode(tensors[lo: lo + batch_size])
    if captioner.device.type == "cuda":
        torch.cuda.synchronize()
    return len(tensors) / (time.perf_counter() - start)


@torch.inference_mode()
def naive_loop(captioner: Captioner, paths: list[Path], max_len: int) -> float:
    decoder, vocab = captioner.decoder, captioner.vocab
    start = time.perf_counter()
    for path in paths:
        image = Image.open(path).convert("RGB")
        # encode(): the pooled vector or the spatial map, whichever the decoder reads
        feature = captioner.encode(captioner.preprocess(image).unsqueeze(0))
        state, word, words = decoder.start(feature), vocab.start_id, []
        for _ in range(max_len):
            logp, state = decoder.step(torch.tensor([word], device=captioner.device), state)
            word = logp.argmax(-1).item()
            if word == vocab.end_id:
                break
            words.append(word)
    return len(paths) / (time.perf_counter() - start)


def print_figures(figures: dict, json_path: Path | None) -> None:
    """One `name value` line per figure on stdout, and the same as JSON when asked."""
    width = max(map(len, figures)) + 2
    for key, value in figures.items():
        print(f"{key:{width}s} {value}")
    if json_path:
        json_path.write_text(json.dumps(figures, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, help="directory of images (default: generate --count JPEGs)")
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--model", type=Path, help="checkpoint (default: models/model.pt if present, else a bench one)")
    p.add_argument("--vocab-size", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=CaptionConfig.batch_size)
    p.add_argument("--workers", type=int, default=CaptionConfig.num_workers)
    p.add_argument("--threads", type=int, default=CaptionConfig.threads, help="torch threads (0 = default)")
    p.add_argument("--beam-size", type=int, default=CaptionConfig.beam_size)
    p.add_argument("--max-len", type=int, default=CaptionConfig.max_len)
    p.add_argument("--device", default="cpu")
    p.add_argument("--naive-count", type=int, default=50, help="images for the (slow) naive loop")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = args.images
        if images is None:
            images = tmp / "images"
            images.mkdir()
            make_photos(images, args.count)
        model = args.model or (Path("models/model.pt") if Path("models/model.pt").is_file() else None)
        model = model or make_bench_checkpoint(tmp / "bench_model.pt", args.vocab_size)
        if args.threads:
            torch.set_num_threads(args.threads)
        cfg = CaptionConfig(batch_size=args.batch_size, num_workers=args.workers, threads=args.threads,
                            device=args.device, beam_size=args.beam_size, max_len=args.max_len)
        captioner = Captioner.from_checkpoint(model, device=args.device, beam_size=args.beam_size,
                                              max_len=args.max_len)
        paths = [f.path for f in list_images(images, cfg.patterns)]

        a = encoder_only(captioner, paths, args.batch_size)
        started = time.perf_counter()
        summary = caption_directory(images, tmp / "captions.parquet", model, cfg)
        wall = time.perf_counter() - started
        b_loop = summary["images_per_second"]  # the captioning loop, model loading excluded
        b_wall = summary["captioned"] / wall  # including model loading and the final merge
        c = naive_loop(captioner, paths[: args.naive_count], args.max_len)

    figures = {
        "images": len(paths), "model": str(model), "device": args.device, "torch_threads": torch.get_num_threads(),
        "workers": args.workers, "batch_size": args.batch_size, "beam_size": args.beam_size,
        "a_encoder_only_img_s": round(a, 2), "b_caption_batch_img_s": round(b_loop, 2),
        "b_caption_batch_wall_img_s": round(b_wall, 2), "c_naive_loop_img_s": round(c, 2),
        "b_over_a": round(b_loop / a, 3), "b_over_c": round(b_loop / c, 2),
    }
    print_figures(figures, args.json)


if __name__ == "__main__":
    main()

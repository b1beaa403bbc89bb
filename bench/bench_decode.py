"""Decoding speed on cached features: greedy and beam search as evaluate and caption-batch run
them (batches of 32), and SCST's sampling (64 images x 5 samples) in float32 and under the
training autocast. Images/s, best and median of --repeats, the variants interleaved. Then one
decoding step's attention with SDPA against the matmuls of `attend`, at the decoding sizes.

    .venv/bin/python bench/bench_decode.py                      # models/model.pt, data/features.parquet
    .venv/bin/python bench/bench_decode.py --model M --features F --images 512

To compare with an older commit, run this file from a worktree of it (it imports the code
beside it): git worktree add /tmp/old <commit> && cp bench/bench_decode.py /tmp/old/bench/ &&
(cd /tmp/old && ../main/.venv/bin/python bench/bench_decode.py). Timings on a 2-core VM move
~30% between runs: compare within a run, or best figures of alternating runs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.multilingual import banned_ids  # noqa: E402
from pipeline.decoders.search import decode  # noqa: E402
from pipeline.feature_table import load_features  # noqa: E402
from pipeline.inference.captioner import Captioner  # noqa: E402
from pipeline.training.scst import sample  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("models/model.pt"))
    p.add_argument("--features", type=Path, default=Path("data/features.parquet"))
    p.add_argument("--images", type=int, default=320, help="cached maps decoded per repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = every core)")
    p.add_argument("--captions", type=Path, help="JSON file: written with this code's greedy and beam captions "
                   "when absent, else compared with them (run it from two commits: are the captions the same?)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    captioner = Captioner.from_checkpoint(args.model, runtime="torch")
    decoder, vocab = captioner.decoder.eval(), captioner.vocab
    table = load_features(args.features, grid=decoder.spatial)
    ids = list(table.ids)[-args.images:]
    feats = torch.from_numpy(table.lookup(ids, spatial=decoder.spatial)).float()
    banned = banned_ids(vocab)

    def search(beam: int) -> float:
        start = time.perf_counter()
        for lo in range(0, len(feats), 32):
            decode(decoder, feats[lo: lo + 32], vocab.start_id, vocab.end_id, 20, beam, 0.7, banned)
        return len(feats) / (time.perf_counter() - start)

    def sampling(dtype: torch.dtype | None) -> float:
        generator = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            for lo in range(0, len(feats), 64):
                sample(decoder, feats[lo: lo + 64], vocab.start_id, vocab.end_id, 22, 5, banned, generator)
        return len(feats) / (time.perf_counter() - start)

    variants = {"greedy, batches of 32": lambda: search(1), "beam 3, batches of 32": lambda: search(3),
                "SCST sampling 64 x 5, float32": lambda: sampling(None),
                "SCST sampling 64 x 5, bf16 autocast": lambda: sampling(torch.bfloat16)}
    for run in variants.values():  # warm-up
        run()
    figures: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            figures[name].append(run())
    print(f"{len(feats)} cached maps {tuple(feats.shape[1:])}, {torch.get_num_threads()} threads, images/s:")
    for name, values in figures.items():
        print(f"  {name:38s} best {max(values):6.1f}  median {statistics.median(values):6.1f}")
    attention_kernels(args.repeats)
    if args.captions:
        compare_captions(args.captions, {f"beam {beam}": [vocab.decode(t) for lo in range(0, len(feats), 32)
                                                          for t in decode(decoder, feats[lo: lo + 32], vocab.start_id,
                                                                          vocab.end_id, 20, beam, 0.7, banned).tokens]
                                         for beam in (1, 3)})


def attention_kernels(repeats: int) -> None:
    """One decoding step's attention (one query per row, 8 heads of 32) with SDPA's CPU kernel
    and with pipeline.decoders.transformer.attend: beam search's 96 rows, SCST's 320, against
    12 cached keys (self-attention) or the 49 memory tokens (cross-attention). Milliseconds."""
    import torch.nn.functional as F

    from pipeline.decoders.transformer import attend
    print("one decoding step's attention, ms (best of rounds): SDPA / attend (matmuls)")
    for rows in (96, 320):
        for keys in (12, 49):
            q, k, v = torch.randn(rows, 8, 1, 32), torch.randn(rows, 8, keys, 32), torch.randn(rows, 8, keys, 32)
            best = {"SDPA": float("inf"), "attend": float("inf")}
            with torch.inference_mode():
                for _ in range(repeats):
                    for name, fn in (("SDPA", lambda: F.scaled_dot_product_attention(q, k, v)),
                                     ("attend", lambda: attend(q, k, v, causal=False))):
                        fn()
                        start = time.perf_counter()
                        for _ in range(50):
                            fn()
                        best[name] = min(best[name], (time.perf_counter() - start) / 50 * 1e3)
            print(f"  {rows:3d} rows x {keys:2d} keys                     {best['SDPA']:.2f} / {best['attend']:.2f}")


def compare_captions(path: Path, captions: dict[str, list[str]]) -> None:
    if not path.exists():
        path.write_text(json.dumps(captions))
        print(f"captions written to {path}")
        return
    before = json.loads(path.read_text())
    for key, now in captions.items():
        same = sum(a == b for a, b in zip(before[key], now))
        print(f"  {key}: {same} / {len(now)} captions identical to {path}")


if __name__ == "__main__":
    main()

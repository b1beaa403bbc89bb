"""Where a cross-entropy step of the default transformer decoder spends its time on a CPU, and
what train.precision and the CPU kernels chosen in pipeline/decoders/ buy (README: Performance).

    python bench/bench_train_step.py [--threads 2] [--rounds 4]

Prints, measured in this one process with the rounds interleaved (this VM's speed drifts by
30% between runs): matmul GFLOP/s in float32 and bf16 at the decoder's sizes; attention forward
+ backward with SDPA against pipeline.decoders.transformer.attend; dropout with nn.Dropout
against pipeline.decoders.base.Dropout; Adam's update with and without fused kernels; and one
whole step (batch 64, 14 tokens, 7x7x472 maps) in float32 and under bf16 autocast."""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.decoders import DecoderConfig, build_decoder
from pipeline.decoders.base import Dropout
from pipeline.decoders.transformer import attend
from pipeline.runtime import native_bf16


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Seconds per call after two warm-up calls."""
    fn(), fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def compare(name: str, variants: dict[str, Callable[[], object]], rounds: int, repeat: int, unit: str = "ms",
            scale: Callable[[float], float] = lambda s: s * 1e3) -> None:
    totals = dict.fromkeys(variants, 0.0)
    for _ in range(rounds):  # interleaved, so drift hits every variant alike
        for key, fn in variants.items():
            totals[key] += timed(fn, repeat) / rounds
    figures = ", ".join(f"{key} {scale(t):.1f} {unit}" for key, t in totals.items())
    print(f"{name:44s} {figures}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, native bf16 on this CPU: {native_bf16(torch.device('cpu'))}")

    a32, b32 = torch.randn(3136, 256), torch.randn(256, 1024)  # 64 maps x 49 cells through a 256 -> 1024 layer
    flops = 2 * 3136 * 256 * 1024
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    compare("matmul 3136x256 @ 256x1024", {"fp32": lambda: a32 @ b32, "bf16": lambda: a16 @ b16},
            args.rounds, 20, "GFLOP/s", lambda s: flops / s / 1e9)

    for n_keys, causal in ((49, False), (13, True)):
        q, k, v = (torch.randn(64, 8, n, 32, requires_grad=True) for n in (13, n_keys, n_keys))
        grad = torch.randn(64, 8, 13, 32)
        compare(f"attention fwd+bwd, 13 queries x {n_keys} keys", {
            "SDPA": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal).backward(grad),
            "attend": lambda: attend(q, k, v, causal).backward(grad)}, args.rounds, 20)

    x = torch.randn(64, 13, 256)
    compare("dropout p=0.3, 64x13x256", {"nn.Dropout": lambda: F.dropout(x, 0.3, True),
                                         "base.Dropout": lambda: Dropout(0.3)(x)}, args.rounds, 50)

    cfg = DecoderConfig(decoder="transformer", hidden_size=256, num_layers=2, dropout=0.3, heads=8)
    decoder = build_decoder(cfg, (472, 7, 7), 64)
    for param in decoder.parameters():
        param.grad = torch.randn_like(param)
    optimizers = {f"fused={f}": torch.optim.AdamW(decoder.parameters(), 1e-9, fused=f) for f in (False, True)}
    compare("AdamW update of the decoder", {k: o.step for k, o in optimizers.items()}, args.rounds, 20)

    feats = torch.randn(64, 472, 7, 7).half()
    caps = torch.randint(3, 64, (64, 14))
    caps[:, 0] = 1
    optimizer = torch.optim.AdamW(decoder.parameters(), 1e-4, fused=True)

    def step(dtype: torch.dtype | None) -> Callable[[], None]:
        def run() -> None:
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                logits = decoder(feats, caps)
            loss = F.cross_entropy(logits.float().flatten(0, 1), caps[:, 1:].reshape(-1), ignore_index=0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(decoder.parameters(), 5.0)
            optimizer.step()
        return run
    compare("cross-entropy step, batch 64 x 14 tokens", {"fp32": step(None), "bf16 autocast": step(torch.bfloat16)},
            args.rounds, 10)


if __name__ == "__main__":
    main()

"""Which spatial map the features stage keeps for the attention decoders, and one encoder
pass that returns it beside the pooled vector.

Levels are named by output stride, so they mean the same on every encoder:
- head: the encoder's final map (Lite0: 7x7x1280, ImageNet-specialised, little colour left);
- s32: the last block before the head at the same stride (Lite0: 7x7x320);
- s16: the last block at twice the head's resolution (Lite0: 14x14x112; keeps the most colour);
- s16+s32: s16 average-pooled onto the s32 grid and stacked with it (Lite0: 7x7x432): the
  colour of s16 at the cost of 49 attention locations instead of 196;
- s8+s16+s32: the same plus the last stride-8 block (Lite0: 28x28x40), pooled 4x4 (7x7x472).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.encoders.registry import Encoder

SPATIAL_LEVELS = ("none", "head", "s16", "s32", "s16+s32", "s8+s16+s32")


def _candidates(trunk: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules whose outputs are block boundaries: Lite's MBConv blocks, or the stages of a
    Sequential trunk (ResNet layers, Inception's Mixed blocks)."""
    blocks = getattr(trunk, "_blocks", None)
    if isinstance(blocks, nn.ModuleList):
        return [(f"_blocks.{i}", b) for i, b in enumerate(blocks)]
    return list(trunk.named_children())


@torch.inference_mode()
def find_taps(encoder: Encoder) -> dict[str, str]:
    """Module names of the s8, s16 and s32 outputs, found by one probe forward on zeros."""
    sizes: dict[str, int] = {}
    modules = _candidates(encoder.trunk)
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: sizes.__setitem__(name, out.shape[-1]))
             for name, m in modules]
    try:
        side = encoder.preprocess.size
        head = encoder.forward_grid(torch.zeros(1, 3, side, side, device=next(encoder.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    head_side = head.shape[-1]
    names = [name for name, _ in modules if name in sizes]
    s32 = [n for n in names if sizes[n] == head_side]
    s16 = [n for n in names if sizes[n] > head_side]
    s8 = [n for n in names if sizes[n] > 2 * head_side]
    if not s32 or not s16:
        raise ValueError(f"encoder {encoder.name!r} exposes no block outputs at the head's stride and the one "
                         f"before it: use features.spatial: head or none")
    return {"s32": s32[-1], "s16": s16[-1], **({"s8": s8[-1]} if s8 else {})}


def _pool_to(m: torch.Tensor, side: tuple[int, int]) -> torch.Tensor:
    """Average-pool a map onto a coarser grid: pooling keeps colour (a low-frequency signal).
    An integer ratio uses a fixed kernel (bit-identical to adaptive pooling there), which the
    ONNX exporter can write; adaptive pooling is only its fallback for other ratios."""
    height, width = (int(s) for s in m.shape[-2:])
    if (height, width) == side:
        return m
    if height % side[0] == 0 and width % side[1] == 0:
        return F.avg_pool2d(m.float(), (height // side[0], width // side[1])).to(m.dtype)
    return F.adaptive_avg_pool2d(m.float(), side).to(m.dtype)


class SpatialEncoder:
    """Calls encoder.forward_grid once per batch and returns (pooled head features (B, D) in
    float32, the chosen spatial map (B, C, h, w) or None)."""

    def __init__(self, encoder: Encoder, level: str):
        if level not in SPATIAL_LEVELS:
            raise ValueError(f"features.spatial {level!r}: use one of {', '.join(SPATIAL_LEVELS)}")
        self.encoder, self.level = encoder, level
        self.parts = [p for p in level.split("+") if p in ("s8", "s16", "s32")]
        self._captured: dict[str, torch.Tensor] = {}
        if self.parts:
            taps = find_taps(encoder)
            if "s8" in self.parts and "s8" not in taps:
                raise ValueError(f"encoder {encoder.name!r} exposes no stride-8 block output: use features.spatial: "
                                 f"s16+s32")
            modules = dict(encoder.trunk.named_modules())
            for part in self.parts:
                modules[taps[part]].register_forward_hook(
                    lambda _m, _i, out, part=part: self._captured.__setitem__(part, out))

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        grid = self.encoder.forward_grid(x)
        pooled = grid.float().mean(dim=(2, 3))  # pooled in float32 even under autocast
        if self.level == "none":
            return pooled, None
        if self.level == "head":
            return pooled, grid
        maps = [self._captured.pop(p) for p in self.parts]
        side = tuple(int(s) for s in maps[-1].shape[-2:])
        maps = [_pool_to(m, side) for m in maps]
        return pooled, torch.cat(maps, dim=1) if len(maps) > 1 else maps[0]

    @torch.inference_mode()
    def spatial_shape(self) -> list[int] | None:
        if self.level == "none":
            return None
        side = self.encoder.preprocess.size
        device = next(self.encoder.parameters()).device
        _, spatial = self(torch.zeros(1, 3, side, side, device=device))
        return list(spatial.shape[1:])

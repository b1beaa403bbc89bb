"""What every decoder shares: the config dataclass (the `train` params section extends it),
the describe() format and the small helpers for incremental decoding."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class DecoderConfig:
    # The first four keep their order: older code builds DecoderConfig(embed, hidden, layers, dropout).
    embed_size: int = 256
    hidden_size: int = 256
    num_layers: int = 1
    dropout: float = 0.3
    decoder: str = "show_tell"  # show_tell | attention | transformer
    attention_dim: int = 256  # attention: width of the additive attention
    heads: int = 8  # transformer: attention heads (hidden_size must be a multiple)
    alpha_c: float = 1.0  # attention: weight of the doubly stochastic penalty (aux_loss)


class Dropout(nn.Dropout):
    """nn.Dropout with its mask drawn from random bytes, eight per 64-bit draw of the generator,
    instead of one float per element: 0.4-0.7 ms against 1.1-1.2 ms (rand_like) and ~2.2 ms
    (nn.Dropout's bernoulli_) for a 64x13x256 activation on a CPU, where masks were 7-9% of a
    transformer training step (bench/bench_train_step.py, README: Performance). p is rounded to 1/256 (0.3 drops
    77/256 = 0.301); the kept values are scaled by 1 / (1 - that), so the expectation is kept.
    No state, so checkpoints are unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        threshold = round(self.p * 256)
        if threshold >= 256:
            return torch.zeros_like(x)
        n = x.numel()
        # The full int64 range: random_() alone leaves the top bit of each draw at 0.
        draws = torch.empty((n + 7) // 8, dtype=torch.int64, device=x.device).random_(-2 ** 63, 2 ** 63 - 1)
        random_bytes = draws.view(torch.uint8)[:n].view(x.shape)
        keep = (random_bytes >= threshold).to(x.dtype).mul_(256 / (256 - threshold))
        return x * keep


class Decoder(nn.Module):
    """Base of the registered decoders. Subclasses set `name`, `spatial` and implement
    forward / start / step / select (see pipeline/decoders/__init__.py for the contract)."""

    name: str = ""
    spatial: bool = False

    def __init__(self, feature_shape: tuple[int, ...], vocab_size: int, cfg: DecoderConfig):
        super().__init__()
        self.feature_shape, self.vocab_size, self.cfg = tuple(int(s) for s in feature_shape), vocab_size, cfg
        expected = 3 if self.spatial else 1
        if len(self.feature_shape) != expected:
            kind = "a spatial map (C, h, w)" if self.spatial else "pooled vectors (D,)"
            raise ValueError(
                f"decoder {self.name!r} takes {kind}, got feature shape {self.feature_shape}: "
                f"{'store the grid (features.grid: true)' if self.spatial else 'use pooled features'} "
                f"or pick another train.decoder")

    def check_features(self, features: torch.Tensor) -> torch.Tensor:
        """float16 cache -> float32, and a clear error instead of a shape error deep inside."""
        if tuple(features.shape[1:]) != self.feature_shape:
            raise ValueError(
                f"decoder {self.name!r} was built for features of shape {self.feature_shape}, got "
                f"{tuple(features.shape[1:])}: re-extract features with the training encoder settings")
        return features.float()

    def forward_rows(self, features: torch.Tensor, captions: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """forward(features[rows], captions): several captions of the same images (SCST's samples).
        Decoders whose image encoding is costly override it to encode each image once."""
        return self(features[rows], captions)

    def aux_loss(self) -> torch.Tensor:
        """Regulariser of the last forward, added to the loss by training (0 when none)."""
        return self.head.weight.new_zeros(())

    def describe(self) -> dict:
        return {**asdict(self.cfg), "decoder": self.name, "feature_shape": list(self.feature_shape),
                "vocab_size": self.vocab_size}


def take_rows(state: dict, rows: torch.Tensor, per_image: tuple[str, ...]) -> dict:
    """Select batch rows of a dict state. Tensors named in `per_image` depend only on the image
    (encoder memory): `src` records which input image each row came from, and when a reorder
    keeps every row on its image (beam search after the first expansion) they are not copied."""
    src = state["src"][rows]
    same = src.shape == state["src"].shape and torch.equal(src, state["src"])
    out = {}
    for key, value in state.items():
        if key == "src":
            out[key] = src
        elif key in per_image and same:
            out[key] = value
        else:
            out[key] = _index(value, rows)
    return out


def _index(value, rows: torch.Tensor):
    if isinstance(value, torch.Tensor):
        return value.index_select(0, rows)
    if isinstance(value, int):  # a count shared by all rows (positions already decoded)
        return value
    return type(value)(_index(v, rows) for v in value)  # lists/tuples of per-layer tensors

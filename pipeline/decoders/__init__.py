"""Caption decoders, chosen with `train.decoder`.

Contract shared by every decoder (and relied on by pipeline.decoders.search):
- class attribute `spatial`: False takes pooled features (N, D); True a map (N, C, h, w).
  Cached float16 features are cast to float32 inside.
- forward(features, captions (B, T)) -> logits (B, T-1, V) predicting captions[:, 1:];
  aux_loss() -> the scalar regulariser of the last forward (0 when the decoder has none).
- start(features) -> state; step(tokens (N,), state) -> (log-softmax (N, V) float32, state);
  select(state, rows) -> state with batch rows picked/repeated (beam expansion, reordering).
- describe() -> dict that decoder_from_spec() turns back into the same architecture."""
from __future__ import annotations

from dataclasses import fields

from torch import nn

from pipeline.decoders.attention import SoftAttention
from pipeline.decoders.base import Decoder, DecoderConfig
from pipeline.decoders.show_tell import ShowTell
from pipeline.decoders.transformer import TransformerDecoder

DECODERS: dict[str, type[Decoder]] = {
    "show_tell": ShowTell, "attention": SoftAttention, "transformer": TransformerDecoder,
}

__all__ = ["DECODERS", "Decoder", "DecoderConfig", "ShowTell", "SoftAttention", "TransformerDecoder",
           "build_decoder", "decoder_class", "decoder_from_spec"]


def decoder_class(name: str) -> type[Decoder]:
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r} (train.decoder); choices: {', '.join(sorted(DECODERS))}")
    return DECODERS[name]


def build_decoder(cfg: DecoderConfig, feature_shape: tuple[int, ...], vocab_size: int) -> nn.Module:
    return decoder_class(cfg.decoder)(tuple(feature_shape), vocab_size, cfg)


def decoder_from_spec(spec: dict) -> nn.Module:
    """Rebuild the decoder a checkpoint's describe() dict names (weights are loaded by the caller).
    A spec without "decoder" comes from before the registry: Show and Tell with `feature_dim`."""
    name = spec.get("decoder", "show_tell")
    shape = spec["feature_shape"] if "feature_shape" in spec else [spec["feature_dim"]]
    # Keys absent from older specs take today's defaults; they do not affect those architectures.
    cfg = DecoderConfig(**{f.name: spec[f.name] for f in fields(DecoderConfig) if f.name in spec})
    cfg.decoder = name
    return build_decoder(cfg, tuple(shape), int(spec["vocab_size"]))

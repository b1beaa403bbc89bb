"""Python API: load a trained checkpoint once, caption images.

    from pipeline.captioner import Captioner
    captioner = Captioner.from_checkpoint("models/model.pt")
    captioner.generate_caption("photo.jpg")
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.checkpoint import load_checkpoint
from pipeline.decoding import Decoded, decode
from pipeline.encoders import EncoderConfig, Preprocess, build_encoder
from pipeline.images import ImageLoadError, load_rgb, make_loader
from pipeline.model import CaptionDecoder, DecoderConfig
from pipeline.runtime import resolve_device
from pipeline.vocab import Vocab


@dataclass
class CaptionResult:
    path: str
    caption: str | None
    mean_logprob: float | None
    error: str | None = None
    width: int | None = None
    height: int | None = None


class Captioner:
    def __init__(self, checkpoint: dict, device: str = "cpu", beam_size: int = 3,
                 max_len: int = 20, length_penalty: float = 0.7):
        self.device = resolve_device(device)
        self.vocab = Vocab.from_list(checkpoint["vocab"])
        info = checkpoint["encoder"]
        self.encoder_info = info
        self.encoder = build_encoder(EncoderConfig(name=info["name"], weights=info["weights"]))
        if checkpoint.get("encoder_state"):
            self.encoder.load_state_dict(checkpoint["encoder_state"])
        # The preprocessing the features were made with is the contract; a mismatch would
        # silently give every image the same caption, so refuse instead.
        self.preprocess = Preprocess.from_dict(info["preprocess"])
        if self.preprocess != self.encoder.preprocess:
            raise ValueError(f"checkpoint preprocessing {info['preprocess']} differs from encoder "
                             f"{info['name']!r} preprocessing {self.encoder.preprocess.to_dict()}")
        spec = checkpoint["decoder"]
        if spec["vocab_size"] != len(self.vocab):
            raise ValueError(f"decoder expects {spec['vocab_size']} words, vocabulary has {len(self.vocab)}")
        cfg = DecoderConfig(**{k: spec[k] for k in ("embed_size", "hidden_size", "num_layers", "dropout")})
        self.decoder = CaptionDecoder(spec["feature_dim"], spec["vocab_size"], cfg)
        self.decoder.load_state_dict(checkpoint["decoder_state"])
        self.encoder.to(self.device).eval()
        self.decoder.to(self.device).eval()
        self.beam_size, self.max_len, self.length_penalty = beam_size, max_len, length_penalty
        self.model_id = str(checkpoint.get("extra", {}).get("model_id") or info.get("fingerprint", info["name"]))

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", **kwargs) -> "Captioner":
        return cls(load_checkpoint(path), device=device, **kwargs)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                features = self.encoder(images)
        else:
            features = self.encoder(images)
        # Training saw features rounded to float16 in the cache; round the same way here so
        # captions from images equal captions from the cache.
        return features.half().float()

    def decode_features(self, features: torch.Tensor, beam_size: int | None = None) -> Decoded:
        beam = self.beam_size if beam_size is None else beam_size
        return decode(self.decoder, features.to(self.device), self.vocab.start_id, self.vocab.end_id,
                      self.max_len, beam, self.length_penalty)

    def caption_tensors(self, images: torch.Tensor, beam_size: int | None = None) -> tuple[list[str], list[float]]:
        out = self.decode_features(self.encode(images), beam_size)
        return [self.vocab.decode(t) for t in out.tokens], out.mean_logprob

    def generate_caption(self, image_path: str | Path, beam_size: int | None = None) -> str:
        """Caption one image; raises ImageLoadError with the reason for an unreadable file."""
        image = load_rgb(Path(image_path), draft_size=self.preprocess.size)
        captions, _ = self.caption_tensors(self.preprocess(image).unsqueeze(0), beam_size)
        return captions[0]

    def caption_batch(self, paths: list[str | Path], batch_size: int = 32, num_workers: int = 0,
                      beam_size: int | None = None) -> list[CaptionResult]:
        """Caption many images; a bad file becomes a result with `error` set, never an exception."""
        results: list[CaptionResult | None] = [None] * len(paths)
        loader = make_loader([Path(p) for p in paths], self.preprocess, batch_size, num_workers)
        for batch in loader:
            for index, error in batch.failures:
                results[index] = CaptionResult(str(paths[index]), None, None, error)
            if batch.images is None:
                continue
            captions, confidence = self.caption_tensors(batch.images, beam_size)
            for index, caption, conf, (w, h) in zip(batch.indices, captions, confidence, batch.sizes):
                results[index] = CaptionResult(str(paths[index]), caption, conf, None, w, h)
        return results  # type: ignore[return-value]


__all__ = ["Captioner", "CaptionResult", "ImageLoadError"]

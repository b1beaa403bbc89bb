"""Python API: load a trained checkpoint once, caption images.

    from pipeline.captioner import Captioner
    captioner = Captioner.from_checkpoint("models/model.pt")
    captioner.generate_caption("photo.jpg")
    captioner.caption_batch(["a.jpg", "b.png"])  # bad files become results with .error set
"""
from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.checkpoint import load_checkpoint
from pipeline.decoding import Decoded, decode
from pipeline.encoders import EncoderConfig, Preprocess, build_encoder
from pipeline.images import ImageLoadError, load_image_tensor, make_loader
from pipeline.model import CaptionDecoder, DecoderConfig
from pipeline.runtime import resolve_device
from pipeline.vocab import Vocab


@dataclass
class CaptionResult:
    path: str
    caption: str | None
    mean_logprob: float | None  # mean token log-probability: a length-fair confidence
    error: str | None = None
    width: int | None = None
    height: int | None = None


class CheckpointMismatchError(ValueError):
    """The checkpoint's parts do not fit together (vocabulary, decoder, encoder)."""


def model_digest(checkpoint: dict) -> str:
    """Identity of the trained model (decoder weights, vocabulary, encoder): two checkpoints
    caption alike iff this matches, wherever the file lives. Keys caption-batch's resume."""
    digest = hashlib.sha256()
    for state in (checkpoint["decoder_state"], checkpoint.get("encoder_state") or {}):
        for key in sorted(state):
            digest.update(key.encode())
            digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    info = {k: checkpoint["encoder"].get(k) for k in ("name", "weights", "fingerprint", "preprocess")}
    digest.update(json.dumps([checkpoint["vocab"], info, checkpoint["decoder"]], sort_keys=True).encode())
    return digest.hexdigest()[:16]


class Captioner:
    def __init__(self, checkpoint: dict, device: str = "cpu", beam_size: int = 3,
                 max_len: int = 20, length_penalty: float = 0.7):
        missing = [k for k in ("vocab", "encoder", "decoder", "decoder_state") if k not in checkpoint]
        if missing:
            raise CheckpointMismatchError(f"checkpoint lacks {missing}: not written by the train stage")
        self.device = resolve_device(device)
        self.vocab = Vocab.from_list(checkpoint["vocab"])
        info = checkpoint["encoder"]
        self.encoder_info = info
        self.encoder = build_encoder(EncoderConfig(name=info["name"], weights=info["weights"],
                                                   image_size=int(info["preprocess"]["size"])))
        if checkpoint.get("encoder_state"):
            self.encoder.load_state_dict(checkpoint["encoder_state"])
        self.encoder.optimize_for_inference()  # as the features stage does: identical features
        # The preprocessing the features were made with is the contract; a mismatch would
        # silently give every image the same caption, so refuse instead.
        self.preprocess = Preprocess.from_dict(info["preprocess"])
        if self.preprocess != self.encoder.preprocess:
            raise CheckpointMismatchError(
                f"checkpoint preprocessing {info['preprocess']} differs from encoder {info['name']!r} "
                f"preprocessing {self.encoder.preprocess.to_dict()}: retrain with the current encoder")
        spec = checkpoint["decoder"]
        if spec["vocab_size"] != len(self.vocab):
            raise CheckpointMismatchError(
                f"decoder expects {spec['vocab_size']} words, the checkpoint's vocabulary has {len(self.vocab)}: "
                f"the checkpoint is inconsistent, retrain it (dvc repro train)")
        if spec["feature_dim"] != self.encoder.feature_dim:
            raise CheckpointMismatchError(
                f"decoder expects {spec['feature_dim']}-d features, encoder {info['name']!r} gives "
                f"{self.encoder.feature_dim}: retrain the decoder on this encoder's features")
        cfg = DecoderConfig(**{k: spec[k] for k in ("embed_size", "hidden_size", "num_layers", "dropout")})
        self.decoder = CaptionDecoder(spec["feature_dim"], spec["vocab_size"], cfg)
        try:
            self.decoder.load_state_dict(checkpoint["decoder_state"])
        except RuntimeError as err:
            raise CheckpointMismatchError(f"decoder weights do not fit the decoder description: {err}") from None
        self.encoder.to(self.device, memory_format=torch.channels_last).eval()
        self.decoder.to(self.device).eval()
        self.beam_size, self.max_len, self.length_penalty = beam_size, max_len, length_penalty
        self.model_id = str(checkpoint.get("extra", {}).get("model_id") or f"{info['name']}-{model_digest(checkpoint)}")

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", **kwargs) -> "Captioner":
        """Load on `device` (default CPU). torch.load(weights_only=True): a checkpoint cannot run code."""
        try:
            checkpoint = load_checkpoint(path)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as err:  # not a torch file, truncated...
            raise CheckpointMismatchError(f"{path}: cannot be read as a checkpoint ({err})") from None
        return cls(checkpoint, device=device, **kwargs)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
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
        """Preprocessed images (N, C, H, W) -> captions and their mean token log-probabilities."""
        out = self.decode_features(self.encode(images), beam_size)
        return [self.vocab.decode(t) for t in out.tokens], out.mean_logprob

    def generate_caption(self, image_path: str | Path, beam_size: int | None = None) -> str:
        """Caption one image; raises ImageLoadError with the reason for an unreadable file."""
        tensor, _ = load_image_tensor(Path(image_path), self.preprocess)
        captions, _ = self.caption_tensors(tensor.unsqueeze(0), beam_size)
        return captions[0]

    def caption_batch(self, paths: list[str | Path], batch_size: int = 32, num_workers: int = 0,
                      beam_size: int | None = None) -> list[CaptionResult]:
        """Caption many images, results in input order; a bad file becomes a result with
        `error` set, never an exception."""
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


__all__ = ["Captioner", "CaptionResult", "CheckpointMismatchError", "ImageLoadError", "model_digest"]

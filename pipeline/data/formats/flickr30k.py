"""Flickr30k: the authors' `results_20130124.token` (`image.jpg#N<TAB>caption`) or
Kaggle's `results.csv` (`image_name| comment_number| comment`, stray spaces and one row
missing a separator) or `captions.txt` (`image,caption`). No official split lists
exist, so every image gets a deterministic split (use `karpathy` for the usual one).
Images live in `flickr30k_images/`, `Images/` or `images/`, whichever holds them
(for Kaggle's nested `flickr30k_images/flickr30k_images/`, set data.root to the outer folder)."""
from __future__ import annotations

from pathlib import Path

from .common import DataConfig, Parsed, Record, find_file, pick_prefix, read_flickr_captions, where

CAPTION_FILES = ("results_20130124.token", "results.csv", "captions.txt")
IMAGE_DIRS = ("flickr30k_images/", "Images/", "images/")


def parse(root: Path, cfg: DataConfig) -> Parsed:
    path = find_file(root, cfg.captions_file, CAPTION_FILES, "flickr30k")
    lines = read_flickr_captions(path)
    prefix = pick_prefix(root, [name for _, name, _ in lines], IMAGE_DIRS)
    return Parsed([Record(prefix + name, (caption,), None, where(path, line)) for line, name, caption in lines])

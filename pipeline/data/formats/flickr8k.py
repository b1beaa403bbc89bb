"""Flickr8k, as distributed by the authors or as the Kaggle repackaging.

Official: `Flickr8k.token.txt` (`image.jpg#N<TAB>caption`) plus the split lists
`Flickr_8k.trainImages.txt`, `Flickr_8k.devImages.txt` (-> val) and
`Flickr_8k.testImages.txt`. The token file mentions ~90 images that are in no split
list; they are dropped (and reported) so the official test set stays the official one.
Kaggle: `captions.txt` with an `image,caption` header and no split lists -> every image
gets a deterministic split. Images live in `Flicker8k_Dataset/` (sic), `Images/` or
`images/`, whichever holds them."""
from __future__ import annotations

from pathlib import Path

from .common import (DataConfig, FormatError, Parsed, Record, find_file, pick_prefix, read_flickr_captions,
                     read_lines, where)

CAPTION_FILES = ("Flickr8k.token.txt", "captions.txt")
SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
IMAGE_DIRS = ("Flicker8k_Dataset/", "Flickr8k_Dataset/", "Images/", "images/")
NOT_IN_SPLIT_FILES = "not in any official split file"


def parse(root: Path, cfg: DataConfig) -> Parsed:
    path = find_file(root, cfg.captions_file, CAPTION_FILES, "flickr8k")
    lines = read_flickr_captions(path)
    prefix = pick_prefix(root, [name for _, name, _ in lines], IMAGE_DIRS)
    splits = read_split_files(root, SPLIT_FILES)
    records, unlisted = [], []
    for line, name, caption in lines:
        if splits is not None and name not in splits:
            unlisted.append(name)
            continue
        split = splits[name] if splits is not None else None
        records.append(Record(prefix + name, (caption,), split, where(path, line)))
    dropped = {NOT_IN_SPLIT_FILES: sorted(set(unlisted))} if unlisted else {}
    return Parsed(records, dropped)


def read_split_files(root: Path, files: dict[str, str]) -> dict[str, str] | None:
    """image name -> split from one-name-per-line lists; None when the data set ships none.
    All lists or none: a partial set would silently shrink the data. An image on two
    lists is an error, since it would leak between training and evaluation."""
    present = {split: root / name for split, name in files.items() if (root / name).is_file()}
    if not present:
        return None
    if len(present) < len(files):
        missing = [name for split, name in files.items() if split not in present]
        raise FormatError(f"{root}: found some split lists but not {', '.join(missing)}; provide all or none")
    splits: dict[str, str] = {}
    origin: dict[str, str] = {}
    for split, path in present.items():
        for line, name in read_lines(path):
            if name in splits and splits[name] != split:
                raise FormatError(
                    f"image {name} is in two splits: '{splits[name]}' ({origin[name]}) "
                    f"and '{split}' ({where(path, line)}); each image must be in exactly one split"
                )
            splits[name], origin[name] = split, where(path, line)
    return splits

"""Multi30k (github.com/multi30k/dataset): Flickr30k images described in several languages,
as line-aligned text files beside an image list per split.

Task 1 (`data.multi30k_task: 1`): `raw/{split}.{lang}` holds one sentence per image, line k
describing line k of `image_splits/{split}.txt` (English and its translations: de, fr, cs).
Task 2 (`data.multi30k_task: 2`, the default): `raw/{split}.{n}.{lang}`, n = 1..5, five
independent descriptions per image in en and de, aligned with `image_splits/{split}_images.txt`.
Text files may be gzip-compressed (`train.de.gz`, as the repository ships them). The task
folder is `data/task{1,2}/` (a clone of the repository as data.root), `task{1,2}/`, or the
root itself; images are in `flickr30k-images/` (or the folders the flickr30k format knows).

The data set's own splits are used: train, val, and the 2016 Flickr test set (Task 1
`test_2016_flickr`, Task 2 `test_2016`) as test. The later shared-task test sets
(test_2017_flickr, test_2017_mscoco, test_2018_flickr) are not read. Every language whose
files are there is read; data.languages keeps some."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import flickr30k
from .common import DataConfig, FormatError, Parsed, Record, normalize_language, open_text, pick_prefix

IMAGE_DIRS = ("flickr30k-images/", *flickr30k.IMAGE_DIRS, "")


@dataclass(frozen=True)
class Task:
    splits: dict[str, str]  # the data set's split name -> ours
    image_list: str  # under image_splits/, with {split}
    numbered: bool  # raw files carry a description number: train.3.de


TASKS = {
    1: Task({"train": "train", "val": "val", "test_2016_flickr": "test"}, "{split}.txt", numbered=False),
    2: Task({"train": "train", "val": "val", "test_2016": "test"}, "{split}_images.txt", numbered=True),
}


def parse(root: Path, cfg: DataConfig) -> Parsed:
    task = TASKS.get(cfg.multi30k_task)
    if task is None:
        raise FormatError(f"multi30k: data.multi30k_task must be 1 or 2, got {cfg.multi30k_task}")
    folder = _task_folder(root, cfg.multi30k_task)
    entries = []  # (image name, caption, our split, where, language)
    for source_split, split in task.splits.items():
        texts = _text_files(folder / "raw", source_split, task.numbered)
        if not texts:
            continue
        list_path = folder / "image_splits" / task.image_list.replace("{split}", source_split)
        if not list_path.is_file():
            raise FormatError(f"multi30k: {texts[0][0]} has no image list {list_path}; it is line-aligned with one")
        names = _aligned_lines(list_path)
        blank = next((k for k, name in enumerate(names, start=1) if not name), None)
        if blank is not None:
            raise FormatError(f"{list_path}:{blank}: empty line in an image list (line k names the image of line k)")
        for path, language in texts:
            lines = _aligned_lines(path)
            if len(lines) != len(names):
                raise FormatError(f"{path} has {len(lines)} lines but {list_path} lists {len(names)} images; "
                                  "the files must be line-aligned (line k describes image k)")
            entries += [(name, text, split, f"{path.name}:{k}", language)
                        for k, (name, text) in enumerate(zip(names, lines), start=1)]
    prefix = pick_prefix(root, [name for name, *_ in entries], IMAGE_DIRS)
    return Parsed([Record(prefix + name, (text,), split, at, language) for name, text, split, at, language in entries])


def _task_folder(root: Path, number: int) -> Path:
    candidates = [root / "data" / f"task{number}", root / f"task{number}", root]
    for folder in candidates:
        if (folder / "raw").is_dir() and (folder / "image_splits").is_dir():
            return folder
    other = 3 - number
    hint = (f"; the root holds Task {other} files: set data.multi30k_task={other}"
            if any((f / "raw").is_dir() for f in (root / "data" / f"task{other}", root / f"task{other}")) else "")
    raise FormatError(
        f"multi30k: no Task {number} folder with raw/ and image_splits/ in "
        f"{', '.join(str(f) for f in candidates)}{hint}"
    )


def _text_files(raw: Path, source_split: str, numbered: bool) -> list[tuple[Path, str]]:
    """(file, language) of every `{split}.{lang}` (or `{split}.{n}.{lang}`) file, gzipped or
    not; a plain file wins over its .gz twin (the same text, unpacked)."""
    found: dict[str, Path] = {}
    for path in sorted(raw.glob(f"{source_split}.*"), key=lambda p: p.suffix == ".gz"):
        stem = path.name[len(source_split) + 1:].removesuffix(".gz")
        found.setdefault(stem, path)
    texts = []
    for stem, path in found.items():
        number, _, code = stem.rpartition(".")
        if numbered != bool(number) or (numbered and not number.isdigit()):
            layout = f"{source_split}.{'1.' if numbered else ''}de"
            raise FormatError(f"multi30k: {path} is not named like {layout} or {layout}.gz (split, "
                              f"{'description number, ' if numbered else ''}language); move other files out of raw/")
        texts.append((normalize_language(code, f"multi30k: {path}: language"), int(number or 0), path))
    return [(path, language) for language, _, path in sorted(texts)]  # each language's captions together


def _aligned_lines(path: Path) -> list[str]:
    """Every line, blank ones included (line k belongs to image k), without the trailing blank
    lines an editor may add."""
    with open_text(path) as f:
        lines = [line.strip() for line in f]
    while lines and not lines[-1]:
        lines.pop()
    return lines

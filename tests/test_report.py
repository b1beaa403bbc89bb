"""Caption sheet: a real PNG whose pixel size follows from the grid, images drawn in their
cells, captions drawn below them, same input -> same bytes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.evaluation import report


def _items(tmp_path: Path, count: int) -> list[dict]:
    items = []
    for n in range(count):
        path = tmp_path / f"img{n}.png"
        Image.new("RGB", (64, 64), (220, 0, 0)).save(path)  # pure red, square
        items.append({"image_path": path, "generated": f"a red square number {n} on its own",
                      "references": ["a red image", "a plain red square with nothing else in it", "unused"],
                      "score": 0.5 + n})
    return items


def test_sheet_is_png_of_grid_size(tmp_path):
    out = report.caption_sheet(_items(tmp_path, 5), tmp_path / "sheets" / "sheet.png", columns=4)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as image:
        assert image.format == "PNG"
        # 5 items in 4 columns -> 2 rows; each cell CELL_WIDTH_IN x (IMAGE + TEXT) inches at DPI.
        cell_height = report.IMAGE_HEIGHT_IN + report.TEXT_HEIGHT_IN
        assert image.size == (round(4 * report.CELL_WIDTH_IN * report.DPI), round(2 * cell_height * report.DPI))


def test_fewer_items_than_columns_shrinks_the_grid(tmp_path):
    out = report.caption_sheet(_items(tmp_path, 2), tmp_path / "sheet.png", columns=4)
    with Image.open(out) as image:
        assert image.size[0] == round(2 * report.CELL_WIDTH_IN * report.DPI)


def test_cells_show_image_and_captions(tmp_path):
    out = report.caption_sheet(_items(tmp_path, 2), tmp_path / "sheet.png", columns=2)
    pixels = np.asarray(Image.open(out).convert("RGB")).astype(int)
    dpi = report.DPI
    # Centre of the first cell's image area is the red test image.
    centre = pixels[int(report.IMAGE_HEIGHT_IN * dpi / 2), int(report.CELL_WIDTH_IN * dpi / 2)]
    assert centre[0] > 180 and centre[1] < 60 and centre[2] < 60
    # The text band under the image holds dark (caption) pixels; the page background is white.
    text_band = pixels[int(report.IMAGE_HEIGHT_IN * dpi) + 5 : int((report.IMAGE_HEIGHT_IN + 1.0) * dpi),
                       : int(report.CELL_WIDTH_IN * dpi)]
    assert (text_band.sum(axis=2) < 200).sum() > 200
    assert tuple(pixels[-1, -1]) == (255, 255, 255)


def test_same_input_gives_same_bytes(tmp_path):
    items = _items(tmp_path, 3)
    first = report.caption_sheet(items, tmp_path / "a.png").read_bytes()
    second = report.caption_sheet(items, tmp_path / "b.png").read_bytes()
    assert first == second


def test_long_captions_are_cut_to_a_few_lines():
    lines = report._wrap("word " * 100)
    assert len(lines) == report.MAX_CAPTION_LINES and lines[-1].endswith("...")
    assert all(len(line) <= report.WRAP_CHARS for line in lines)


def test_bad_items_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        report.caption_sheet([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="lacks references, score"):
        report.caption_sheet([{"image_path": "a.png", "generated": "x"}], tmp_path / "x.png")
    item = _items(tmp_path, 1)[0] | {"image_path": tmp_path / "missing.png"}
    with pytest.raises(FileNotFoundError, match="missing.png"):
        report.caption_sheet([item], tmp_path / "x.png")


def _red_text_pixels(png: Path) -> int:
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    text_band = pixels[int(report.IMAGE_HEIGHT_IN * report.DPI) + 5:]  # below the (red) test images
    r, g, b = text_band[..., 0], text_band[..., 1], text_band[..., 2]
    return int(((r > 150) & (g < 90) & (b < 90)).sum())


def test_wrong_words_are_bracketed_and_red(tmp_path):
    items = _items(tmp_path, 2)
    plain = report.caption_sheet(items, tmp_path / "plain.png", columns=2)
    assert _red_text_pixels(plain) == 0
    items[1]["wrong"] = [1, 3, 4]  # "red", "number", "1" in "a red square number 1 on its own"
    marked = report.caption_sheet(items, tmp_path / "marked.png", columns=2)
    assert _red_text_pixels(marked) > 50
    pixels = np.asarray(Image.open(marked).convert("RGB")).astype(int)
    first_cell = pixels[int(report.IMAGE_HEIGHT_IN * report.DPI) + 5:, : int(report.CELL_WIDTH_IN * report.DPI)]
    r, g, b = first_cell[..., 0], first_cell[..., 1], first_cell[..., 2]
    assert ((r > 150) & (g < 90) & (b < 90)).sum() == 0  # only the item with wrong words is marked
    assert report._bracket(3, "number", {1, 3, 4}) == "[number" and report._bracket(4, "1", {1, 3, 4}) == "1]"
    assert report._bracket(1, "red", {1, 3, 4}) == "[red]" and report._bracket(2, "square", {1, 3, 4}) == "square"


def test_marked_caption_keeps_its_lines_and_cut(tmp_path):
    item = _items(tmp_path, 1)[0] | {"generated": "word " * 60 + "end", "wrong": list(range(0, 61, 2))}
    out = report.caption_sheet([item], tmp_path / "long.png")
    pixels = np.asarray(Image.open(out).convert("RGB")).astype(int)
    # Marks stay inside the cell's width, on at most MAX_CAPTION_LINES lines.
    red = (pixels[..., 0] > 150) & (pixels[..., 1] < 90) & (pixels[..., 2] < 90)
    red[: int(report.IMAGE_HEIGHT_IN * report.DPI) + 5] = False
    rows = np.flatnonzero(red.any(axis=1))
    assert np.flatnonzero(red.any(axis=0)).max() < report.CELL_WIDTH_IN * report.DPI
    line_px = report.FONT_SIZE * 1.35 / 72 * report.DPI
    assert rows.max() - rows.min() < report.MAX_CAPTION_LINES * line_px

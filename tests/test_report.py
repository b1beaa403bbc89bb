"""Caption sheet: a real PNG whose pixel size follows from the grid, images drawn in their
cells, captions drawn below them, same input -> same bytes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import report


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

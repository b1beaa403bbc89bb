"""Caption sheet: a PNG grid of images with their generated and reference captions, for a
human to judge at a glance what the numbers in metrics.json mean. Words of a generated
caption that the grounded metric finds wrong (an item's optional `wrong`: word indices)
are drawn [bracketed] in red, so a fluent but false caption stands out."""
from __future__ import annotations

import logging
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

logger = logging.getLogger(__name__)

# One cell, in inches at DPI: a fixed figure size (no bbox_inches="tight") keeps the PNG's
# pixel size a function of the item count alone, so sheets from different runs line up.
CELL_WIDTH_IN = 3.6
IMAGE_HEIGHT_IN = 2.7
TEXT_HEIGHT_IN = 1.9
DPI = 100
WRAP_CHARS = 44  # characters per caption line at FONT_SIZE in CELL_WIDTH_IN
FONT_SIZE = 8.5
MAX_CAPTION_LINES = 3  # per caption; longer ones end in "..." so cells never overlap
REFERENCES_SHOWN = 2
WRONG_COLOUR = "#d40000"


def caption_sheet(items: list[dict], out_png: Path, columns: int = 4, score_label: str = "CIDEr-D") -> Path:
    """Write a grid of `items` (each: image_path, generated, references, score; optional
    image_id, and wrong: indices into generated.split() of words to mark) to `out_png`.
    Item order is kept, so pass them sorted the way you want to read them."""
    if not items:
        raise ValueError("caption_sheet needs at least one item")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    for n, item in enumerate(items):
        missing = {"image_path", "generated", "references", "score"} - set(item)
        if missing:
            raise ValueError(f"caption sheet item {n} lacks {', '.join(sorted(missing))}")
    columns = min(columns, len(items))
    rows = math.ceil(len(items) / columns)
    cell_height = IMAGE_HEIGHT_IN + TEXT_HEIGHT_IN
    fig = plt.figure(figsize=(columns * CELL_WIDTH_IN, rows * cell_height), dpi=DPI)
    try:
        _draw_cells(fig, items, columns, rows, score_label)
        out_png = Path(out_png)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png, dpi=DPI, facecolor="white", metadata={"Software": None})
    finally:
        plt.close(fig)
    logger.info("wrote caption sheet with %d images to %s", len(items), out_png)
    return out_png


def _draw_cells(fig, items: list[dict], columns: int, rows: int, score_label: str) -> None:
    cell_height = IMAGE_HEIGHT_IN + TEXT_HEIGHT_IN
    for n, item in enumerate(items):
        row, col = divmod(n, columns)
        # Axes boxes in figure fractions: [left, bottom, width, height] with a small margin.
        left = col / columns
        top = 1 - row / rows
        image_box = [left + 0.02 / columns, top - IMAGE_HEIGHT_IN / (rows * cell_height),
                     0.96 / columns, (IMAGE_HEIGHT_IN - 0.1) / (rows * cell_height)]
        _draw_image(fig.add_axes(image_box), Path(item["image_path"]))
        text_top = top - (IMAGE_HEIGHT_IN + 0.05) / (rows * cell_height)
        _draw_captions(fig, left + 0.03 / columns, text_top, item, score_label)


def _draw_image(ax, image_path: Path) -> None:
    if not image_path.is_file():
        raise FileNotFoundError(f"caption sheet image {image_path} does not exist; "
                                "pass image paths that resolve from the working directory")
    with Image.open(image_path) as image:
        image = image.convert("RGB")
        image.thumbnail((512, 512))  # a sheet cell is ~360 px wide; keep memory small
    ax.imshow(image)
    ax.set_axis_off()


def _draw_captions(fig, x: float, y: float, item: dict, score_label: str) -> None:
    header = f"{score_label} {float(item['score']):.2f}"
    if item.get("image_id") is not None:
        header = f"{item['image_id']}  ·  {header}"
    words, wrong = str(item["generated"]).split(), set(item.get("wrong") or ())
    generated = _wrap(" ".join(_bracket(n, w, wrong) for n, w in enumerate(words)))
    lines = [(header, {"color": "dimgray"})] + [(line, {"weight": "bold"}) for line in generated]
    for reference in list(item["references"])[:REFERENCES_SHOWN]:
        lines += [(line, {"color": "#404040", "style": "italic"}) for line in _wrap(reference, "ref: ")]
    line_height = FONT_SIZE * 1.35 / 72 / fig.get_figheight()  # points -> figure fraction
    for k, (text, style) in enumerate(lines):
        if wrong and 1 <= k <= len(generated):
            continue  # drawn word by word below
        fig.text(x, y - k * line_height, text, fontsize=FONT_SIZE, va="top", ha="left", **style)
    if wrong:
        _draw_marked(fig, x, y - line_height, line_height, generated, wrong)


def _bracket(n: int, word: str, wrong: set[int]) -> str:
    """Brackets around each run of wrong words: "[to the left of]", not four pairs."""
    if n not in wrong:
        return word
    return ("" if n - 1 in wrong else "[") + word + ("" if n + 1 in wrong else "]")


def _draw_marked(fig, x: float, y: float, line_height: float, lines: list[str], wrong: set[int]) -> None:
    """The generated caption's wrapped lines word by word, each word placed after the measured
    width of the one before, so that wrong words can be red; the brackets already in the
    text keep the marks readable in greyscale too."""
    style = {"fontsize": FONT_SIZE, "va": "top", "ha": "left", "weight": "bold"}
    renderer = fig.canvas.get_renderer()
    to_fraction = 1 / (fig.get_figwidth() * fig.dpi)  # display pixels -> figure fraction
    probes = [fig.text(0, 0, text, **style) for text in ("x x", "xx")]
    wide, narrow = (probe.get_window_extent(renderer).width for probe in probes)
    for probe in probes:
        probe.remove()
    n = 0  # word index into the caption: wrapping keeps words whole and in order
    for k, line in enumerate(lines):
        left = x
        for word in line.split():
            colour = WRONG_COLOUR if n in wrong else "black"
            drawn = fig.text(left, y - k * line_height, word, color=colour, **style)
            left += (drawn.get_window_extent(renderer).width + wide - narrow) * to_fraction
            n += 1


def _wrap(caption: str, prefix: str = "") -> list[str]:
    lines = textwrap.wrap(prefix + " ".join(str(caption).split()), WRAP_CHARS, subsequent_indent=" " * len(prefix))
    if len(lines) > MAX_CAPTION_LINES:
        lines = lines[: MAX_CAPTION_LINES - 1] + [lines[MAX_CAPTION_LINES - 1][: WRAP_CHARS - 3] + "..."]
    return lines or [prefix + "(empty caption)"]

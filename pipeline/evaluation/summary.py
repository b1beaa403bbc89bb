"""A compact table of metrics/eval.json for the terminal: one row per split and decoding,
the headline caption metrics beside the grounded ones (what captions get right about the
image), instead of the dozens of columns `dvc metrics show` prints. A model of several
languages adds a row per other language, split and decoding ("test de"): the first rows are
its default language's (English when it has it).

    python -m pipeline.evaluation.summary metrics/eval.json
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

SPLITS = ("test", "novel")
DECODINGS = ("greedy", "beam")
# (header, path inside one decoding's block); the grounded block exists only for the scenes.
COLUMNS = (
    ("BLEU-4", ("bleu_4",)),
    ("CIDEr-D", ("cider",)),
    ("METEOR", ("meteor",)),
    ("obj P", ("grounded", "object_precision")),
    ("obj R", ("grounded", "object_recall")),
    ("rel", ("grounded", "relation_accuracy")),
    ("exact", ("grounded", "exact_set")),
    *((f"exact{n}", ("grounded", "by_objects", str(n), "exact_set")) for n in (1, 2, 3)),
    ("twice", ("grounded", "repeated_object_rate")),  # captions naming one object twice
)


def summary_table(metrics: dict) -> str:
    """The table as text; '-' where eval.json has no such figure."""
    header = ["split", "decoding", *(name for name, _ in COLUMNS)]
    rows = [header]
    for language, figures in [("", metrics), *sorted(metrics.get("by_language", {}).items())]:
        for split in SPLITS:
            for decoding in DECODINGS:
                block = figures.get(split, {}).get(decoding)
                if isinstance(block, dict):
                    label = f"{split} {language}" if language else split
                    rows.append([label, decoding, *(_cell(block, path) for _, path in COLUMNS)])
    if len(rows) == 1:
        raise ValueError("no test/novel x greedy/beam figures found; is this the evaluate stage's metrics/eval.json?")
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    return "\n".join(lines[:1] + ["-" * len(lines[0])] + lines[1:])


def _cell(block: dict, path: tuple[str, ...]) -> str:
    value = block
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        logger.error("usage: python -m pipeline.evaluation.summary metrics/eval.json")
        return 2
    path = Path(args[0])
    try:
        table = summary_table(json.loads(path.read_text()))
    except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
        logger.error("%s: %s (run `dvc repro evaluate` to write it)", path, e)
        return 2
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

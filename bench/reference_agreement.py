"""How well do the references agree with each other? Scores one reference of every image against
its other references, per caption language: the "human" figure to read model metrics against
(on COCO-style multi-reference data, models often beat it on BLEU). With --rotate every
reference takes a turn as the hypothesis (the mean is printed), not only the first.

    python bench/reference_agreement.py data/manifest.parquet --split test [--rotate]

Each language is split for scoring as evaluation splits it (pipeline/data/tokenizers.py), so
the figures compare with a model's `by_language` metrics in metrics/eval.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.manifest import read_manifest  # noqa: E402
from pipeline.data.multilingual import caption_languages, captions_in, ordered_languages  # noqa: E402
from pipeline.evaluation.metrics import score_captions  # noqa: E402


def agreement(captions: dict[str, list[str]], language: str, backend: str, rotate: bool) -> dict:
    """Mean corpus metrics of reference j against the others, j = 0 (or every j with rotate)."""
    least = min(map(len, captions.values()))
    turns = range(least) if rotate else range(1)
    sums: dict[str, float] = {}
    for j in turns:
        refs = {i: c[:j] + c[j + 1:] for i, c in captions.items()}
        hyps = {i: c[j] for i, c in captions.items()}
        for key, value in score_captions(refs, hyps, backend=backend, language=language).corpus.items():
            sums[key] = sums.get(key, 0.0) + value
    return {key: round(value / len(turns), 4) for key, value in sums.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("manifest", type=Path)
    p.add_argument("--split", default="test")
    p.add_argument("--backend", default="auto")
    p.add_argument("--rotate", action="store_true", help="every reference in turn, not only the first")
    args = p.parse_args()
    manifest, _ = read_manifest(args.manifest)
    rows = manifest[manifest.split == args.split]
    languages = ordered_languages(code for codes in caption_languages(rows) for code in codes)
    out = {"split": args.split, "references_per_image": "n-1", "rotate": args.rotate, "languages": {}}
    for language in languages:
        captions = {i: c for i, c in zip(rows.image_id, captions_in(rows, language)) if len(c) >= 2}
        if captions:
            out["languages"][language] = {"images": len(captions),
                                          **agreement(captions, language, args.backend, args.rotate)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

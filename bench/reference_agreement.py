"""How well do the references agree with each other? Scores the first reference of every
image against its other references: the "human" figure to read model metrics against
(on COCO-style multi-reference data, models often beat it on BLEU).

    python bench/reference_agreement.py data/manifest.parquet --split test
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.manifest import read_manifest  # noqa: E402
from pipeline.evaluation.metrics import score_captions  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("manifest", type=Path)
    p.add_argument("--split", default="test")
    p.add_argument("--backend", default="auto")
    args = p.parse_args()
    manifest, _ = read_manifest(args.manifest)
    rows = manifest[(manifest.split == args.split) & (manifest.captions.map(len) >= 2)]
    refs = {i: list(c[1:]) for i, c in zip(rows.image_id, rows.captions)}
    hyps = {i: c[0] for i, c in zip(rows.image_id, rows.captions)}
    report = score_captions(refs, hyps, backend=args.backend)
    print(json.dumps({"split": args.split, "images": len(rows), "references_per_image": "n-1",
                      **{k: round(v, 4) for k, v in report.corpus.items()}}, indent=2))


if __name__ == "__main__":
    main()

"""Stage `evaluate`: free-running captions for the test (and held-out `novel`) split, the COCO
caption metrics into a small JSON kept in git, a per-image table and a caption sheet."""
from pathlib import Path

import pandas as pd
import torch

from pipeline.captioner import Captioner
from pipeline.config import load_section
from pipeline.evaluate import EvaluateConfig, evaluate_split, write_json
from pipeline.features import load_features
from pipeline.manifest import read_manifest, safe_join
from pipeline.report import caption_sheet
from stages.common import parser, stage_main


@stage_main
def main() -> None:
    p = parser(__doc__)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True)
    p.add_argument("--info", type=Path, required=True)
    p.add_argument("--captions", type=Path, required=True)
    p.add_argument("--sheet", type=Path, required=True)
    args = p.parse_args()
    cfg = load_section(args.params, "evaluate", EvaluateConfig)
    manifest, root = read_manifest(args.manifest)
    table = load_features(args.features)
    manifest = manifest[manifest.image_id.isin(set(table.ids))]
    captioner = Captioner.from_checkpoint(args.model, beam_size=cfg.beam_size, max_len=cfg.max_len,
                                          length_penalty=cfg.length_penalty)
    train_captions = [c for caps in manifest.loc[manifest.split == "train", "captions"] for c in caps]
    metrics, info, tables = {}, {}, []
    for split in ("test", "novel"):
        rows = manifest[manifest.split == split].reset_index(drop=True)
        if rows.empty:
            continue
        features = torch.from_numpy(table.lookup(list(rows.image_id)))
        results, per_image, info = evaluate_split(captioner, rows, features, cfg, train_captions)
        metrics[split] = results
        tables.append(per_image.assign(split=split))
    if "test" not in metrics:
        raise ValueError("the manifest has no test images: check data.test_fraction or the source's split files")
    write_json(args.metrics, metrics)
    write_json(args.info, {**info, "n_images": {s: int((manifest.split == s).sum()) for s in metrics},
                           "beam_size": cfg.beam_size, "decoding": "free-running (no teacher forcing)"})
    per_image = pd.concat(tables, ignore_index=True)
    args.captions.parent.mkdir(parents=True, exist_ok=True)
    per_image.to_parquet(args.captions, index=False)
    test = per_image[per_image.split == "test"].head(cfg.sheet_images)
    caption_sheet([{"image_path": safe_join(root, r.path), "generated": r.caption,
                    "references": list(r.references), "score": r.cider} for r in test.itertuples()], args.sheet)


if __name__ == "__main__":
    main()

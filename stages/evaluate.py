"""Stage `evaluate`: free-running captions for the test (and held-out `novel`) split, the COCO
caption metrics into a small JSON kept in git, a per-image table and a caption sheet."""
from pathlib import Path

from pipeline.captioner import Captioner
from pipeline.config import load_section
from pipeline.evaluate import EvaluateConfig, evaluate, write_json
from pipeline.features import load_features
from pipeline.manifest import RootGuard, read_manifest
from pipeline.report import caption_sheet
from stages.common import parser, stage_main


@stage_main
def main() -> None:
    p = parser(__doc__)
    for name in ("manifest", "features", "model", "metrics", "info", "captions", "sheet"):
        p.add_argument(f"--{name}", type=Path, required=True)
    args = p.parse_args()
    cfg = load_section(args.params, "evaluate", EvaluateConfig)
    manifest, root = read_manifest(args.manifest)
    captioner = Captioner.from_checkpoint(args.model, beam_size=cfg.beam_size, max_len=cfg.max_len,
                                          length_penalty=cfg.length_penalty)
    # A fine-tuned checkpoint's features are not in the cache: evaluate encodes the images under root.
    metrics, per_image, info = evaluate(captioner, manifest, load_features(args.features), cfg, image_root=root)
    write_json(args.metrics, metrics)
    write_json(args.info, info)
    args.captions.parent.mkdir(parents=True, exist_ok=True)
    per_image.to_parquet(args.captions, index=False)
    guard = RootGuard(root)
    sheet = per_image[per_image.split == "test"].head(cfg.sheet_images)
    caption_sheet([{"image_path": guard.join(r.path), "image_id": r.image_id, "generated": r.caption,
                    "references": list(r.references), "score": r.cider} for r in sheet.itertuples()], args.sheet)


if __name__ == "__main__":
    main()

"""Stage `evaluate`: free-running captions for the test (and held-out `novel`) split, the COCO
caption metrics (and, for the scenes, the grounded metric) into a small JSON kept in git, a
per-image table and a caption sheet whose wrong words are marked."""
from pathlib import Path

from pipeline.config import load_section
from pipeline.data.manifest import read_manifest
from pipeline.evaluation.evaluate import EvaluateConfig, evaluate, sheet_items, write_json
from pipeline.evaluation.report import caption_sheet
from pipeline.feature_table import load_features
from pipeline.inference.captioner import Captioner
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
                                          length_penalty=cfg.length_penalty, runtime=cfg.runtime,
                                          no_repeat_ngram=cfg.no_repeat_ngram)
    # A fine-tuned checkpoint's features are not in the cache: evaluate encodes the images under root.
    table = load_features(args.features, grid=captioner.spatial)  # spatial maps only for decoders that read them
    metrics, per_image, info = evaluate(captioner, manifest, table, cfg, image_root=root)
    write_json(args.metrics, metrics)
    write_json(args.info, info)
    args.captions.parent.mkdir(parents=True, exist_ok=True)
    per_image.to_parquet(args.captions, index=False)
    caption_sheet(sheet_items(per_image, manifest, root, cfg.sheet_images), args.sheet)


if __name__ == "__main__":
    main()

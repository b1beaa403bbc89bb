"""Stage `features`: run the image encoder once over every manifest image into Parquet.
Incremental: rows whose image content and encoder are unchanged are reused."""
import json
from pathlib import Path

from pipeline.config import load_section
from pipeline.data.manifest import read_manifest, safe_join
from pipeline.encoders import EncoderConfig
from pipeline.features import FeaturesConfig, extract_features
from stages.common import parser, stage_main


@stage_main
def main() -> None:
    p = parser(__doc__)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--errors", type=Path, required=True)
    p.add_argument("--report", type=Path, required=True)
    args = p.parse_args()
    encoder_cfg = load_section(args.params, "encoder", EncoderConfig)
    cfg = load_section(args.params, "features", FeaturesConfig)
    manifest, root = read_manifest(args.manifest)
    items = [(i, safe_join(root, rel)) for i, rel in zip(manifest.image_id, manifest.path)]
    if cfg.engine == "ray":  # imported only then: Ray is an optional extra
        from pipeline.distributed.ray_features import extract_features_ray as extract
    else:
        extract = extract_features
    stats = extract(items, encoder_cfg, cfg, args.out, args.errors)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(stats, indent=2, sort_keys=True, default=str) + "\n")


if __name__ == "__main__":
    main()

"""Stage `caption`: batch-caption the directory named in params (`caption.images_dir`) with
the trained model, into a Parquet file (same engine as the `caption-batch` command)."""
import json
from pathlib import Path

from pipeline.batch import CaptionConfig, caption_directory
from pipeline.config import load_section
from stages.common import parser, stage_main


@stage_main
def main() -> None:
    p = parser(__doc__)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--report", type=Path, required=True)
    args = p.parse_args()
    cfg = load_section(args.params, "caption", CaptionConfig)
    if not cfg.images_dir:
        raise ValueError("caption.images_dir is empty: name the directory to caption in params.yaml")
    summary = caption_directory(Path(cfg.images_dir), args.out, args.model, cfg)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")


if __name__ == "__main__":
    main()

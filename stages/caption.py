"""Stage `caption`: batch-caption the directory named in params (`caption.images_dir`) with
the trained model, into a Parquet file (same engine as the `caption-batch` command).
Exits with status 4 (after writing OUT and the report) when a directory could not be listed,
so that DVC does not record an incomplete output as done."""
import json
import logging
import sys
from pathlib import Path

from pipeline.config import load_section
from pipeline.inference.batch import EXIT_LISTING_INCOMPLETE, CaptionConfig, caption_directory
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
    if summary["listing_incomplete"]:
        logging.getLogger(__name__).error("listing incomplete (%s): rerun the stage once readable",
                                          ", ".join(summary["unlisted_dirs"]))
        sys.exit(EXIT_LISTING_INCOMPLETE)


if __name__ == "__main__":
    main()

"""Stage `prepare`: one data source (params `data.format`) -> the manifest every later stage reads."""
import json
from pathlib import Path

from pipeline.config import load_section
from pipeline.data.formats import DataConfig
from pipeline.data.manifest import build_manifest, write_manifest
from stages.common import parser, stage_main


@stage_main
def main() -> None:
    p = parser(__doc__)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--report", type=Path, required=True)
    args = p.parse_args()
    cfg = load_section(args.params, "data", DataConfig)
    manifest, report = build_manifest(cfg)
    write_manifest(manifest, args.out, cfg.root)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")


if __name__ == "__main__":
    main()

"""Stage `vocab`: vocabulary from the TRAIN captions only; reports size and <unk> rates."""
import json
from pathlib import Path

from pipeline.config import load_section
from pipeline.data.manifest import read_manifest
from pipeline.data.vocab import VocabConfig, build_vocab, unk_rate
from stages.common import parser, stage_main


@stage_main
def main() -> None:
    p = parser(__doc__)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--report", type=Path, required=True)
    args = p.parse_args()
    cfg = load_section(args.params, "vocab", VocabConfig)
    manifest, _ = read_manifest(args.manifest)
    by_split = {s: [c for caps in manifest.loc[manifest.split == s, "captions"] for c in caps]
                for s in sorted(manifest.split.unique())}
    vocab = build_vocab(by_split.get("train", []), cfg)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    vocab.save(args.out)
    report = {"size": len(vocab), **{f"unk_rate_{s}": round(unk_rate(vocab, c), 6) for s, c in by_split.items()}}
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()

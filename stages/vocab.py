"""Stage `vocab`: vocabulary (vocab.kind: word or sentencepiece) from the TRAIN captions only,
with a language token per language when they are in several (pipeline/data/multilingual.py);
reports its kind, size, tokens per train caption and <unk> rates (and the languages)."""
import json
from pathlib import Path

from pipeline.config import load_section
from pipeline.data.manifest import read_manifest
from pipeline.data.multilingual import build_caption_vocab, caption_languages
from pipeline.data.vocab import VocabConfig, unk_rate
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
    train = by_split.get("train", [])
    train_languages = [c for codes in caption_languages(manifest[manifest.split == "train"]) for c in codes]
    vocab = build_caption_vocab(train, train_languages, cfg)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    vocab.save(args.out)
    # Tokens per train caption, <start>/<end> excluded: train.max_len and evaluate.max_len must hold them.
    lengths = [len(vocab.encode(c)) - 2 for c in train] or [0]
    report = {"kind": vocab.kind, "size": len(vocab), "tokens_per_caption": round(sum(lengths) / len(lengths), 3),
              "max_tokens_per_caption": max(lengths),
              **{f"unk_rate_{s}": round(unk_rate(vocab, c), 6) for s, c in by_split.items()}}
    if vocab.languages:  # absent for one language: the report stays as it was
        by_language = {code: [n for n, c in zip(lengths, train_languages) if c == code] for code in vocab.languages}
        report["languages"] = vocab.languages
        report["tokens_per_caption_by_language"] = {code: {"mean": round(sum(n) / len(n), 3), "max": max(n)}
                                                    for code, n in by_language.items() if n}
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()

"""Stage `train`: fit the decoder (train.decoder) on cached features (or end to end on images when
`train.finetune` is on); DVCLive logs the curves, the best-validation checkpoint is kept.
Data-parallel under torchrun, which the stage starts itself when `train.nproc` > 1; only rank 0
writes DVCLive and the checkpoint."""
import argparse
import logging
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
from dvclive import Live

from pipeline.config import load_section
from pipeline.data.manifest import read_manifest
from pipeline.data.vocabularies import load_vocab
from pipeline.decoders import decoder_class
from pipeline.distributed import ddp
from pipeline.encoders import EncoderConfig
from pipeline.feature_table import load_features
from pipeline.runtime import resolve_device
from pipeline.training.finetune import finetune
from pipeline.training.train import TrainConfig, train
from stages.common import parser, stage_main


@stage_main
def main() -> None:
    p = parser(__doc__)
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--vocab", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--live", type=Path, default=Path("dvclive"))
    args = p.parse_args()
    cfg = load_section(args.params, "train", TrainConfig)
    if cfg.nproc < 1:
        raise ValueError(f"train.nproc must be at least 1, got {cfg.nproc}")
    if cfg.nproc > 1 and cfg.finetune:
        raise ValueError("train.finetune runs on one process: set train.nproc: 1 (or train.finetune: false)")
    if cfg.nproc > 1 and not ddp.launched():
        logging.getLogger(__name__).info("train.nproc %d: relaunching under torchrun", cfg.nproc)
        sys.exit(subprocess.call(ddp.torchrun_command(cfg.nproc, "stages.train", sys.argv[1:])))
    with ddp.process_group(resolve_device(cfg.device).type):
        if not ddp.is_main():  # rank 0 tells the story; the others speak up only for warnings
            logging.getLogger().setLevel(logging.WARNING)
        run(args, cfg)


def run(args: argparse.Namespace, cfg: TrainConfig) -> None:
    encoder_cfg = load_section(args.params, "encoder", EncoderConfig)  # the checkpoint records it
    manifest, root = read_manifest(args.manifest)
    spatial = decoder_class(cfg.decoder).spatial  # attention/transformer read the spatial maps
    if spatial and cfg.finetune:
        raise ValueError(f"train.finetune trains through pooled features only; train.decoder "
                         f"{cfg.decoder!r} needs spatial maps: set train.finetune: false or train.decoder: show_tell")
    table = load_features(args.features, grid=spatial)
    have = set(table.ids)
    manifest = manifest[manifest.image_id.isin(have)]  # images the encoder could not read are skipped
    rows = {s: manifest[manifest.split == s].reset_index(drop=True) for s in ("train", "val")}
    vocab = load_vocab(args.vocab)
    with Live(str(args.live), save_dvc_exp=False, dvcyaml=None) if ddp.is_main() else nullcontext() as live:
        def log(record: dict) -> None:
            for key, value in record.items():
                if key != "epoch":
                    live.log_metric(key, value)
            live.next_step()
        if cfg.finetune:  # images through the encoder being trained; the cache only lists readable images
            summary = finetune(rows["train"], rows["val"], root, vocab, cfg, encoder_cfg, args.out, log_metric=log)
        else:
            feats = {s: torch.from_numpy(table.lookup(list(r.image_id), spatial=spatial)) for s, r in rows.items()}
            # The checkpoint records what made its features, so the Captioner can rebuild them exactly.
            keys = ("name", "weights", "fingerprint", "preprocess", "feature_dim", "grid_shape", "spatial",
                    "precision", "device_type", "code_version", "features_id")
            encoder_info = {k: table.meta.get(k) for k in keys}
            summary = train(rows["train"], feats["train"], rows["val"], feats["val"], vocab,
                            cfg, args.out, encoder_info, log_metric=log)
        if live is not None:
            live.summary.update({k: v for k, v in summary.items() if k != "history"})


if __name__ == "__main__":
    main()

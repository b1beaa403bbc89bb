"""Stage `scenes`: generate the embedded default data set, plus a small directory of
never-seen images (another seed) for the `caption` stage to caption."""
from pathlib import Path

from pipeline.config import load_section
from pipeline.data.scenes import SceneConfig, generate_scenes
from stages.common import parser, stage_main


@stage_main
def main() -> None:
    p = parser(__doc__)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sample-out", type=Path, required=True)
    p.add_argument("--sample-images", type=int, default=24)
    args = p.parse_args()
    cfg = load_section(args.params, "scenes", SceneConfig)
    generate_scenes(args.out, cfg, workers=0)  # one rendering process per core
    sample = SceneConfig(**{**vars(cfg), "n_images": args.sample_images, "seed": cfg.seed + 1_000_003})
    generate_scenes(args.sample_out, sample, workers=0)


if __name__ == "__main__":
    main()

from dataclasses import dataclass, field

import pytest

from pipeline.config import ParamsError, build, load_section, read_params


@dataclass
class Toy:
    lr: float = 1e-3
    epochs: int = 3
    name: str = "x"
    finetune: bool = False
    tags: list[str] = field(default_factory=list)
    path: str | None = None


def test_build_applies_overrides_and_coerces_types():
    cfg = build(Toy, {"lr": "3e-4", "epochs": 5.0, "tags": ["a"], "path": None}, "train")
    assert cfg == Toy(lr=3e-4, epochs=5, tags=["a"])
    assert isinstance(cfg.lr, float) and isinstance(cfg.epochs, int)


def test_unknown_key_fails_naming_the_key():
    with pytest.raises(ParamsError, match=r"train\.lrr") as err:
        build(Toy, {"lrr": 0.1}, "train")
    assert "valid keys" in str(err.value) and "lr" in str(err.value)


@pytest.mark.parametrize("values", [{"epochs": 2.5}, {"finetune": "yes"}, {"lr": "fast"}, {"tags": "a"}])
def test_wrong_types_are_rejected(values):
    with pytest.raises(ParamsError):
        build(Toy, values, "train")


def test_unknown_section_is_rejected(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("trian:\n  lr: 0.1\n")
    with pytest.raises(ParamsError, match="trian"):
        read_params(params)


def test_load_section_defaults_when_section_missing(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  epochs: 7\n")
    assert load_section(params, "train", Toy).epochs == 7
    assert load_section(params, "evaluate", Toy) == Toy()


def test_repo_params_match_every_stage_dataclass():
    """The committed params.yaml must load into each stage's defaults (no stale keys) and
    name every key, so `dvc exp run -S section.key=...` can change any of them."""
    import dataclasses
    from pathlib import Path

    from pipeline.data.formats import DataConfig
    from pipeline.data.scenes import SceneConfig
    from pipeline.data.vocab import VocabConfig
    from pipeline.encoders import EncoderConfig
    from pipeline.evaluation.evaluate import EvaluateConfig
    from pipeline.features import FeaturesConfig
    from pipeline.inference.batch import CaptionConfig
    from pipeline.training.train import TrainConfig

    path = Path(__file__).resolve().parents[1] / "params.yaml"
    sections = {"scenes": SceneConfig, "data": DataConfig, "encoder": EncoderConfig, "features": FeaturesConfig,
                "vocab": VocabConfig, "train": TrainConfig, "evaluate": EvaluateConfig, "caption": CaptionConfig}
    params = read_params(path)
    assert set(params) == set(sections)
    for name, cls in sections.items():
        load_section(path, name, cls)
        assert set(params[name]) == {f.name for f in dataclasses.fields(cls)}, name

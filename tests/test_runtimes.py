"""Encoder runtimes: each exported runtime computes what torch computes, the export is cached
and reused, a mismatching export is refused (or, under auto, replaced by torch), and a runtime
that is not installed names its install command."""
from __future__ import annotations

import logging

import pytest
import torch

from pipeline.encoders import EncoderConfig, build_encoder
from pipeline.encoders import runtimes
from pipeline.encoders.feature_maps import SpatialEncoder
from pipeline.encoders.runtimes import (RuntimeMismatchError, RuntimeUnavailableError, build_runtime,
                                        runtime_candidates)

pytestmark = pytest.mark.usefixtures("single_thread")
CPU = torch.device("cpu")


def spatial_encoder(seed_weights: str = "none", level: str = "s16+s32") -> SpatialEncoder:
    encoder = build_encoder(EncoderConfig(weights=seed_weights, image_size=64)).optimize_for_inference()
    return SpatialEncoder(encoder.to(memory_format=torch.channels_last), level)


def exported(name: str):
    if not runtimes.installed(name):
        pytest.skip(f"{name} is not installed ({runtimes.INSTALL[name]})")
    return name


@pytest.fixture(params=runtimes.EXPORTED)
def runtime_name(request):
    return exported(request.param)


@pytest.mark.parametrize("level", ["s16+s32", "none"])
def test_exported_runtime_matches_torch(runtime_name, level, tmp_path):
    spatial = spatial_encoder(level=level)
    images = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    want_pooled, want_map = build_runtime(spatial, "torch", CPU)(images)
    runtime = build_runtime(spatial, runtime_name, CPU, threads=1, cache_dir=tmp_path)
    assert runtime.name == runtime_name
    pooled, grid = runtime(images)
    assert pooled.shape == want_pooled.shape and pooled.dtype == torch.float32
    assert (pooled - want_pooled).abs().max() <= runtimes.TOLERANCE
    if level == "none":
        assert grid is None and want_map is None
    else:
        assert grid.shape == want_map.shape == (5, 432, 2, 2)
        assert (grid - want_map).abs().max() <= runtimes.TOLERANCE


def test_export_is_cached_and_reused(runtime_name, tmp_path, monkeypatch):
    spatial = spatial_encoder()
    first = build_runtime(spatial, runtime_name, CPU, threads=1, cache_dir=tmp_path)
    export, load, filename = runtimes._BACKENDS[runtime_name]

    def no_export(*args):
        raise AssertionError("exported again although the cache holds this encoder")
    monkeypatch.setitem(runtimes._BACKENDS, runtime_name, (no_export, load, filename))
    second = build_runtime(spatial, runtime_name, CPU, threads=1, cache_dir=tmp_path)
    assert second.path == first.path
    # Other weights are another model: a new export (which the patched exporter refuses).
    other = spatial_encoder()
    with torch.no_grad():
        next(other.encoder.parameters()).mul_(1.5)
    with pytest.raises(AssertionError, match="exported again"):
        build_runtime(other, runtime_name, CPU, threads=1, cache_dir=tmp_path)


def test_a_mismatching_export_is_refused_by_name_and_replaced_under_auto(runtime_name, tmp_path, monkeypatch,
                                                                         caplog):
    spatial = spatial_encoder()
    # The export step writes a model of *other* weights: what torch computes no longer matches.
    other = spatial_encoder()
    with torch.no_grad():
        for p in other.encoder.parameters():
            p.mul_(1.1)
    export, load, filename = runtimes._BACKENDS[runtime_name]
    monkeypatch.setitem(runtimes._BACKENDS, runtime_name,
                        (lambda graph, example, path: export(runtimes._Graph(other).eval(), example, path),
                         load, filename))
    with pytest.raises(RuntimeMismatchError, match="differs from torch by"):
        build_runtime(spatial, runtime_name, CPU, threads=1, cache_dir=tmp_path)
    monkeypatch.setattr(runtimes, "EXPORTED", (runtime_name,))  # auto tries only the sabotaged one
    with caplog.at_level(logging.WARNING, logger="pipeline.encoders.runtimes"):
        runtime = build_runtime(spatial, "auto", CPU, threads=1, cache_dir=tmp_path)
    assert runtime.name == "torch"
    assert f"encoder runtime {runtime_name} unusable (RuntimeMismatchError" in caplog.text


def test_missing_runtime_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(runtimes, "installed", lambda name: False)
    with pytest.raises(RuntimeUnavailableError, match="pip install openvino"):
        build_runtime(spatial_encoder(), "openvino", CPU, cache_dir=tmp_path)
    with pytest.raises(RuntimeUnavailableError, match="pip install onnxruntime onnx"):
        build_runtime(spatial_encoder(), "onnxruntime", CPU, cache_dir=tmp_path)
    assert build_runtime(spatial_encoder(), "auto", CPU, cache_dir=tmp_path).name == "torch"


def test_runtime_choice():
    assert runtime_candidates("auto", torch.device("cuda"), "bf16") == ["torch"]
    assert runtime_candidates("auto", CPU, "bf16") == ["torch"]  # exports run fp32 only
    assert runtime_candidates("auto", CPU, "fp32")[-1] == "torch"
    assert runtime_candidates("auto", CPU, "fp32")[:-1] == [r for r in runtimes.EXPORTED if runtimes.installed(r)]
    with pytest.raises(ValueError, match="precision to fp32"):
        runtime_candidates("openvino", CPU, "bf16")
    with pytest.raises(ValueError, match="runs on the CPU"):
        runtime_candidates("onnxruntime", torch.device("cuda"), "fp32")
    with pytest.raises(ValueError, match="use one of auto, torch"):
        runtime_candidates("tensorrt", CPU, "fp32")

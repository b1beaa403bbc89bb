"""Where the encoder runs: torch, or the same network exported to ONNX Runtime or OpenVINO.

On a small CPU the encoder is most of the time of the two jobs users run most (the features
stage, caption-batch), and the optimised CPU runtimes run it 2-3x faster than torch eager
(README: Performance). Every runtime is called the same way, preprocessed images (N, 3, S, S)
-> (pooled (N, D) float32, spatial map (N, C, h, w) or None), so the callers do not care which.

An exported model is built once per encoder *weights* (a digest of the state dict, so a
fine-tuned encoder gets its own), spatial level, input size and runtime version, into a cache
folder, and reused. Before use, every time, it is run beside torch on a fixed probe batch: a
difference above TOLERANCE is refused (RuntimeMismatchError) for a runtime asked for by name,
and falls back to torch with a warning under `auto`.

    runtime = build_runtime(SpatialEncoder(encoder, "s16+s32"), "auto", device, precision="fp32")
    pooled, spatial = runtime(images)
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from pipeline.encoders.feature_maps import SpatialEncoder
from pipeline.hashing import update_with_state
from pipeline.runtime import PRECISIONS

logger = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
EXPORTED = ("openvino", "onnxruntime")  # `auto` on CPU takes the first one installed (fastest first)
PACKAGES = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino",)}
INSTALL = {"onnxruntime": "pip install onnxruntime onnx  (or: pip install -e '.[onnx]')",
           "openvino": "pip install openvino"}
TOLERANCE = 1e-3  # max abs difference to torch on the probe batch (fp32 exports differ by ~3e-5)
EXPORT_CODE_VERSION = 1  # bump when the export code changes what a cached model computes


class RuntimeUnavailableError(RuntimeError):
    """The runtime asked for is not installed (the message names the install command)."""


class RuntimeMismatchError(RuntimeError):
    """An exported encoder does not compute what torch computes (the message gives the difference)."""


def default_cache_dir() -> Path:
    root = os.environ.get("CAPTION_PIPELINE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                              Path.home() / ".cache") / "caption-pipeline"
    return Path(root) / "runtimes"


def installed(runtime: str) -> bool:
    try:
        return all(metadata.version(p) for p in PACKAGES[runtime])
    except metadata.PackageNotFoundError:
        return False


def check_runtime_name(runtime: str, option: str) -> None:
    if runtime not in RUNTIMES:
        raise ValueError(f"{option} {runtime!r}: use one of {', '.join(RUNTIMES)}")


def default_workers() -> int:
    """Image-decoding processes when none are set. On 2 cores none at all was fastest in every
    measured combination (the encoder's two threads need both cores; README: Performance); with
    more cores, workers decode while the encoder runs (a GPU box needs them to keep the device
    fed; a rule of thumb, not measured here)."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores // 2)


def default_threads() -> int:
    """Inference threads when none are set: every core. Measured on 2 cores (README: Performance),
    two threads beat one with 0, 1 or 2 decoding workers beside them: the workers mostly wait."""
    return os.cpu_count() or 1


class TorchRuntime:
    """The encoder as it is, under autocast when the precision asks for it."""
    name = "torch"

    def __init__(self, spatial: SpatialEncoder, device: torch.device, precision: str):
        self.spatial, self.device, self.dtype = spatial, device, PRECISIONS[precision]

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            return self.spatial(x)


class _Graph(nn.Module):
    """The encoder pass as one module returning tensors only: what the exporters trace."""

    def __init__(self, spatial: SpatialEncoder):
        super().__init__()
        self.spatial, self.encoder = spatial, spatial.encoder

    def forward(self, x: torch.Tensor):
        pooled, grid = self.spatial(x)
        return pooled if grid is None else (pooled, grid.float())


class ExportedRuntime:
    """A compiled exported model; `run` maps a float32 array to the list of output arrays."""

    def __init__(self, name: str, run: Callable[[np.ndarray], list[np.ndarray]], path: Path):
        self.name, self.run, self.path = name, run, path

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        outs = self.run(np.ascontiguousarray(images.float().cpu().numpy()))
        pooled = torch.from_numpy(outs[0])
        return pooled, torch.from_numpy(outs[1]) if len(outs) > 1 else None


# --- export and load, one pair per runtime ---------------------------------------------------
def _export_openvino(graph: nn.Module, example: torch.Tensor, path: Path) -> None:
    import openvino as ov
    with warnings.catch_warnings():  # tracing fixes the input size, as intended: the preprocessing fixes it too
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # OpenVINO's converter traces with torch.jit.trace
        model = ov.convert_model(graph, example_input=example, input=[[-1, *example.shape[1:]]])
    ov.save_model(model, str(path), compress_to_fp16=False)  # fp32 weights: features within TOLERANCE


def _load_openvino(path: Path, threads: int) -> Callable[[np.ndarray], list[np.ndarray]]:
    import openvino as ov
    core = ov.Core()
    # f32 explicitly: on CPUs with bf16 units OpenVINO would otherwise infer in bf16.
    # No pinning of its threads to cores: the features stage reads the next batch in a thread
    # beside them, and with pinned threads whichever one that thread preempts holds up the
    # other at every layer. Unpinned, the stage encoded 135.9 against 123.9 images/s (median of
    # 4 interleaved rounds, faster in each, 2 cores); caption-batch and the encoder alone: the
    # same within noise (README: Performance).
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
        "ENABLE_CPU_PINNING": False})
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> list[np.ndarray]:
        request.infer({0: x})
        return [request.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))]
    return run


def _export_onnx(graph: nn.Module, example: torch.Tensor, path: Path) -> None:
    # The TorchScript exporter: the torch.export-based one needs onnxscript as one more dependency.
    names = ["pooled"] if graph.spatial.level == "none" else ["pooled", "spatial"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(graph, (example,), str(path), dynamo=False, input_names=["images"], output_names=names,
                          dynamic_axes={n: {0: "batch"} for n in ["images", *names]}, opset_version=17)


def _load_onnx(path: Path, threads: int) -> Callable[[np.ndarray], list[np.ndarray]]:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"images": x})


_BACKENDS = {"openvino": (_export_openvino, _load_openvino, "model.xml"),
             "onnxruntime": (_export_onnx, _load_onnx, "model.onnx")}


def export_key(spatial: SpatialEncoder, runtime: str) -> str:
    """What decides the exported model: the weights (digest), the spatial level, the input size,
    the runtime and torch versions and the export code."""
    digest = hashlib.sha256()
    update_with_state(digest, spatial.encoder.state_dict())
    ident = {"weights": digest.hexdigest(), "name": spatial.encoder.name, "level": spatial.level,
             "size": spatial.encoder.preprocess.size, "runtime": runtime,
             "versions": [metadata.version(p) for p in PACKAGES[runtime]], "torch": torch.__version__,
             "code": EXPORT_CODE_VERSION}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def probe_batch(size: int, n: int = 2) -> torch.Tensor:
    """Fixed inputs the export is checked on (normalised images look like unit noise)."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1234))


def exported_runtime(spatial: SpatialEncoder, runtime: str, threads: int, cache_dir: Path | None = None
                     ) -> ExportedRuntime:
    """Export (or reuse the cached export of) the encoder to `runtime` and check it against torch."""
    if not installed(runtime):
        raise RuntimeUnavailableError(f"encoder runtime {runtime!r} is not installed: {INSTALL[runtime]}; "
                                      f"or choose runtime torch/auto")
    export, load, filename = _BACKENDS[runtime]
    folder = Path(cache_dir or default_cache_dir()) / runtime / f"{spatial.encoder.name}-{export_key(spatial, runtime)}"
    path = folder / filename
    probe = probe_batch(spatial.encoder.preprocess.size)
    graph = _Graph(spatial).eval()
    if not path.is_file():
        shutil.rmtree(folder, ignore_errors=True)  # an emptied or damaged cache folder: export afresh
        started = time.perf_counter()
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        with torch.inference_mode():
            export(graph, probe[:1], tmp / filename)
        try:
            os.replace(tmp, folder)  # whole folder at once: a reader never sees half an export
        except OSError:  # another process finished the same export first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("exported %s to %s in %.1fs", spatial.encoder.name, folder, time.perf_counter() - started)
    run = load(path, threads)
    with torch.inference_mode():
        want = graph(probe)
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    got = run(probe.numpy())
    diffs = [float(np.abs(g - w.numpy()).max()) if g.shape == tuple(w.shape) else float("inf")
             for g, w in zip(got, want)]
    if len(got) != len(want) or max(diffs) > TOLERANCE:
        raise RuntimeMismatchError(
            f"the {runtime} export of {spatial.encoder.name} differs from torch by {max(diffs):.3g} (max abs, "
            f"tolerance {TOLERANCE}) on the probe batch ({path}); delete that folder to export again, or "
            f"use runtime torch")
    logger.info("encoder runtime %s (%d threads): matches torch within %.2g", runtime, threads, max(diffs))
    return ExportedRuntime(runtime, run, path)


def runtime_candidates(runtime: str, device: torch.device, precision: str) -> list[str]:
    """The runtimes to try, in order: `auto` = torch on CUDA or under reduced precision, else
    the installed optimised runtimes (fastest first) and torch last."""
    check_runtime_name(runtime, "encoder runtime")
    if runtime == "auto":
        if device.type != "cpu" or PRECISIONS[precision] is not None:
            return ["torch"]
        return [r for r in EXPORTED if installed(r)] + ["torch"]
    if runtime != "torch" and device.type != "cpu":
        raise ValueError(f"encoder runtime {runtime!r} runs on the CPU, the device is {device}: use runtime "
                         f"torch or auto")
    if runtime != "torch" and PRECISIONS[precision] is not None:
        raise ValueError(f"encoder runtime {runtime!r} runs in fp32, precision {precision!r} was asked: set the "
                         f"precision to fp32 (or auto), or use runtime torch")
    return [runtime]


def build_runtime(spatial: SpatialEncoder, runtime: str, device: torch.device, precision: str = "fp32",
                  threads: int = 0, cache_dir: Path | None = None) -> TorchRuntime | ExportedRuntime:
    """The encoder on `runtime` (see the module docstring). threads: 0 = default_threads()."""
    choices = runtime_candidates(runtime, device, precision)
    for name in choices:
        if name == "torch":
            return TorchRuntime(spatial, device, precision)
        try:
            return exported_runtime(spatial, name, threads or default_threads(), cache_dir)
        except Exception as err:  # noqa: BLE001 - any failed export: `auto` falls back, a named runtime fails
            if runtime != "auto":
                raise
            logger.warning("encoder runtime %s unusable (%s: %s): falling back to the next (%s)",
                           name, type(err).__name__, err, ", ".join(choices[choices.index(name) + 1:]))
    raise AssertionError("unreachable: torch ends every list")

"""`caption-batch IMAGES OUT.parquet`: caption a whole directory with the trained model.

Exit codes: 0 every file captioned; 3 some files failed (their rows are in OUT with
status "error"); 4 some directory could not be listed (OUT is written and keeps the earlier
rows under it; rerun once it is readable); 2 usage error (missing directory, no model,
model/vocab or encoder mismatch...).
"""
from __future__ import annotations

import functools
import logging
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from pipeline.config import ParamsError
from pipeline.distributed.ray_cluster import RayOptions, RayUnavailableError
from pipeline.distributed.storage import is_uri
from pipeline.encoders.runtimes import RUNTIMES, RuntimeMismatchError, RuntimeUnavailableError
from pipeline.errors import EncoderWeightsError
from pipeline.inference.batch import EXIT_LISTING_INCOMPLETE, CaptionConfig, CaptionUsageError, caption_directory
from pipeline.inference.captioner import CheckpointMismatchError
from pipeline.inference.listing import DEFAULT_PATTERNS
from pipeline.runtime import resolve_device

EXIT_OK, EXIT_USAGE, EXIT_SOME_FAILED, EXIT_INTERRUPTED = 0, 2, 3, 130  # and EXIT_LISTING_INCOMPLETE = 4
_DEFAULTS = CaptionConfig()

app = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode=None)


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


Runtime = Enum("Runtime", {name: name for name in RUNTIMES}, type=str)  # the encoder runtimes


class Engine(str, Enum):
    local = "local"
    ray = "ray"


def _progress_bar(console: Console) -> Progress:
    return Progress(TextColumn("captioning"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                    TextColumn("{task.fields[rate]}"),
                    TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False)


@app.command(epilog="Exit codes: 0 all captioned, 3 some files failed (rows written with status "
                    "'error'), 4 listing incomplete (a directory could not be listed: OUT is written, "
                    "keeping the earlier rows under it; takes precedence over 3), 2 usage error. "
                    "Rerunning with the same OUT resumes: a row is reused only when the file's bytes, "
                    "the model and every decoding setting (beam size, max length, length penalty, "
                    "precision: the row's 'settings' column) are unchanged; other files are captioned again.")
def main(
    # str, not Path: a Path would turn s3://bucket into s3:/bucket
    images: str = typer.Argument(..., help="Directory of images to caption (--engine ray: also s3://, gs://...)."),
    out: str = typer.Argument(..., help="Output Parquet file (one row per image; resumed if it exists). "
                              "--engine ray: also a URI, then a directory of Parquet parts."),
    model: Path = typer.Option(Path("models/model.pt"),
                               help="Trained checkpoint (`dvc repro` writes models/model.pt)."),
    device: Device = typer.Option(Device.auto, help="auto = cuda when available, else cpu."),
    batch_size: int = typer.Option(_DEFAULTS.batch_size, min=1, help="Images per forward pass."),
    workers: int = typer.Option(_DEFAULTS.num_workers, min=0,
                                help="Image-decoding processes (0 = in the main process)."),
    threads: int = typer.Option(_DEFAULTS.threads, min=0,
                                help="Model threads (0 = every core)."),
    runtime: Runtime = typer.Option(Runtime.auto, help="Where the encoder runs: auto = torch on CUDA, else the "
                                    "fastest installed CPU runtime (openvino, onnxruntime), else torch."),
    beam_size: int = typer.Option(_DEFAULTS.beam_size, min=1, help="Beam width (1 = greedy)."),
    max_len: int = typer.Option(_DEFAULTS.max_len, min=1, help="Longest caption, in words."),
    length_penalty: float = typer.Option(_DEFAULTS.length_penalty, min=0.0,
                                         help="Beam ranking: logprob / length**penalty (0 = raw log-probability)."),
    no_repeat_ngram: int = typer.Option(_DEFAULTS.no_repeat_ngram, min=0,
                                        help="No caption repeats this many words (0 = off; 4 with beam search "
                                        "removed most repeated objects on the scenes: README, Decoders)."),
    language: Optional[str] = typer.Option(None, help="Caption language, one the model was trained on (e.g. de). "
                                           "[default: the model's first, English when it has it]", show_default=False),
    allow_encoder_mismatch: bool = typer.Option(
        False, "--allow-encoder-mismatch",
        help="Caption even if the encoder rebuilt from its weights is not the one the model was trained "
             "with (its rows get a model_id naming the encoder used)."),
    part_size: int = typer.Option(_DEFAULTS.part_size, min=1,
                                  help="Rows per part file: at most this much work is lost if killed."),
    recursive: bool = typer.Option(_DEFAULTS.recursive, help="Descend into subdirectories."),
    pattern: Optional[List[str]] = typer.Option(
        None, help=f"File-name glob, case-insensitive; repeatable. [default: {' '.join(DEFAULT_PATTERNS)}]",
        show_default=False),
    engine: Engine = typer.Option(Engine.local, help="local: this process (and --workers); ray: Ray Data, decoding "
                                  "in CPU tasks and the model in an actor pool, on this machine or a cluster "
                                  "(pip install -e '.[ray]')."),
    address: Optional[str] = typer.Option(None, help="--engine ray: the Ray cluster: auto (the one running here) or "
                                          "ray://HOST:10001. [default: $RAY_ADDRESS, else a local cluster]"),
    actors: int = typer.Option(0, min=0,
                               help="--engine ray: model actors at most (0 = one per GPU, else one per node)."),
) -> None:
    """Caption every image under IMAGES into OUT.parquet with the trained model; broken files
    become rows with status 'error'. Rerunning with the same OUT resumes where it stopped."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    console = Console(stderr=True)
    try:
        try:
            if engine is Engine.local:  # Ray checks its cluster's devices, not this machine's
                resolve_device(device.value)
        except RuntimeError as err:  # asked for CUDA on a machine without it
            raise CaptionUsageError(str(err)) from None
        run = _engine(engine, images, out, address, actors)
        cfg = CaptionConfig(images_dir=str(images), batch_size=batch_size, num_workers=workers, threads=threads,
                            device=device.value, runtime=runtime.value, beam_size=beam_size, max_len=max_len,
                            length_penalty=length_penalty, no_repeat_ngram=no_repeat_ngram, part_size=part_size,
                            language=language or "",
                            recursive=recursive, patterns=list(pattern or DEFAULT_PATTERNS))
        if console.is_terminal:
            with _progress_bar(console) as bar:
                task = bar.add_task("caption", total=None, rate="")

                def report(done: int, total: int) -> None:
                    speed = bar.tasks[task].speed
                    bar.update(task, completed=done, total=total, rate=f"{speed:.1f} images/s" if speed else "")
                summary = run(images, out, model, cfg, progress=report, allow_encoder_mismatch=allow_encoder_mismatch)
        else:
            summary = run(images, out, model, cfg, allow_encoder_mismatch=allow_encoder_mismatch)
    except (CaptionUsageError, CheckpointMismatchError, EncoderWeightsError, FileNotFoundError, ParamsError,
            RuntimeMismatchError, RuntimeUnavailableError, ValueError, RayUnavailableError, ConnectionError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: the rows done so far are kept; run the same command again to resume", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    typer.echo(f"done: {summary['captioned']} captioned, {summary['failed']} failed, {summary['reused']} reused "
               f"-> {out}", err=True)
    typer.echo(f"files: {summary['new']} new, {summary['recaptioned_settings']} re-captioned (model or decoding "
               f"settings changed), {summary['recaptioned_content']} re-captioned (file changed), "
               f"{summary['retried']} retried (error before), {summary['reused']} reused", err=True)
    if summary["failed"]:
        code = "" if summary["listing_incomplete"] else f" (exit code {EXIT_SOME_FAILED})"
        typer.echo(f"{summary['failed']} file(s) could not be captioned: see the rows with status 'error' "
                   f"in {out}{code}", err=True)
    if summary["listing_incomplete"]:
        typer.echo(f"listing incomplete: could not list {', '.join(summary['unlisted_dirs'])}; "
                   f"{summary['kept_unlisted']} earlier row(s) under it kept in {out}; rerun once it is "
                   f"readable (exit code {EXIT_LISTING_INCOMPLETE})", err=True)
        raise typer.Exit(EXIT_LISTING_INCOMPLETE)
    if summary["failed"]:
        raise typer.Exit(EXIT_SOME_FAILED)


def _engine(engine: Engine, images: str, out: str, address: str | None, actors: int):
    """The caption_directory function of the engine asked for."""
    if engine is Engine.ray:
        from pipeline.distributed.ray_engine import caption_directory_ray  # imports Ray only when it runs
        return functools.partial(caption_directory_ray, options=RayOptions(address=address, actors=actors))
    if address is not None or actors:
        raise CaptionUsageError("--address and --actors are options of --engine ray")
    if is_uri(images) or is_uri(out):
        raise CaptionUsageError(f"URIs ({images if is_uri(images) else out}) need --engine ray")
    return caption_directory


if __name__ == "__main__":
    app()

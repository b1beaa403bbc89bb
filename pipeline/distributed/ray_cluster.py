"""Ray for the batch jobs (caption-batch --engine ray, features.engine: ray): import it on
demand, join or start a cluster, and size the operators so that they cannot starve each other.

Ray is an optional extra (`pip install -e '.[ray]'`, a ~79 MB wheel): nothing imports it until
an engine asks for it, and a missing install is a clear error naming that command.

Sizing (`plan_actors`): the model runs in a pool of actors, the decoding in tasks of
`read_cpus` CPUs each. An actor pool holding every CPU leaves no slot for the decoding tasks
and the job hangs (easy to hit on a 2-CPU machine), so on CPU each node keeps `read_cpus` for
decoding and gives the rest to one model actor, whose runtime then uses every core of the node
(as the local engine does: decoding mostly waits for the model). On GPU nodes, one actor per
GPU, one CPU each; the other CPUs decode.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple, Sequence

logger = logging.getLogger(__name__)

INSTALL = "pip install -e '.[ray]'"


class RayUnavailableError(RuntimeError):
    """Ray (with Ray Data) is not installed; the message names the install command."""


class RayPlanError(ValueError):
    """The cluster cannot run the job as asked (too few CPUs, no GPU for device cuda...)."""


def require_ray():
    """The ray module, with Ray Data loaded; a clear error when the extra is not installed."""
    try:
        import ray
        import ray.data  # noqa: F401  (the engines need Data, not just core Ray)
    except ImportError as err:
        raise RayUnavailableError(f"the ray engine needs Ray Data, which is not installed ({err}): "
                                  f"{INSTALL}  (or use the local engine)") from None
    return ray


@dataclass
class RayOptions:
    """How to reach the cluster and how many model actors to run."""
    # None: $RAY_ADDRESS when set, else a local cluster on this machine (started and stopped by
    # the run); "auto": the cluster already running here; "ray://HOST:10001": a remote one.
    address: str | None = None
    actors: int = 0  # model actors at most; 0 = one per GPU, or one per node on CPU
    read_cpus: float = 1.0  # CPUs of each decoding task, kept free of model actors on every node

    def __post_init__(self) -> None:
        if self.actors < 0 or self.read_cpus <= 0:
            raise ValueError(f"ray actors must be >= 0 and read_cpus > 0, got {self.actors} and {self.read_cpus}")


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[float]:
    """Joins the cluster Ray is already connected to, else starts or connects to one (and shuts
    it down after). Yields the seconds it took, for the summary; Ray Data's progress bars are off
    (the caller reports progress) and output keeps the input's order (so OUT is deterministic)."""
    ray = require_ray()
    started = time.perf_counter()
    owned = not ray.is_initialized()
    if owned:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    seconds = time.perf_counter() - started
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.execution_options.preserve_order)
    ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
    ctx.execution_options.preserve_order = True
    try:
        yield seconds
    finally:
        ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.execution_options.preserve_order = saved
        if owned:
            ray.shutdown()


class Plan(NamedTuple):
    device: str  # where the actors run the model: cpu | cuda
    actors: int  # actor pool size (at most)
    actor_cpus: float
    actor_gpus: float
    threads: int  # model threads in each actor

    def remote_args(self) -> dict[str, float]:
        return {"num_cpus": self.actor_cpus, "num_gpus": self.actor_gpus}

    def pool(self, concurrent_calls: int = 1):
        """The actor pool; `concurrent_calls` > 1 runs that many calls of an actor at once, in
        threads, with a Ray that has max_concurrent_calls_per_actor (older ones run one at a time)."""
        strategy = require_ray().data.ActorPoolStrategy
        extra = {}
        if concurrent_calls > 1 and "max_concurrent_calls_per_actor" in inspect.signature(strategy).parameters:
            extra = {"max_concurrent_calls_per_actor": concurrent_calls, "enable_true_multi_threading": True}
        return strategy(min_size=1, max_size=self.actors, **extra)


def plan_actors(device: str, threads: int, options: RayOptions) -> Plan:
    """Actor placement for `device` (auto | cpu | cuda) on the connected cluster; `threads`
    (0 = automatic) as the engines' own option."""
    ray = require_ray()
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    gpus = sum(n.get("GPU", 0) for n in nodes)
    if device == "cuda" and not gpus:
        raise RayPlanError("device cuda asked for, but the Ray cluster has no GPU: use --device cpu or a GPU cluster")
    node_cpus = [n.get("CPU", 0) for n in nodes]
    if device == "cuda" or (device == "auto" and gpus):
        gpu_node_cpus = min(n.get("CPU", 0) for n in nodes if n.get("GPU"))
        per_node = max(n.get("GPU", 0) for n in nodes)
        if gpu_node_cpus < per_node + options.read_cpus:
            raise RayPlanError(f"a GPU node has {gpu_node_cpus:g} CPUs: the ray engine needs one per GPU plus "
                               f"{options.read_cpus:g} for decoding")
        # The model runs on the GPU: its host thread mostly launches kernels.
        return Plan("cuda", options.actors or int(gpus), 1.0, 1.0, threads or 1)
    usable = [c for c in node_cpus if c >= options.read_cpus + 1]
    if not usable:
        raise RayPlanError(f"no Ray node has {options.read_cpus + 1:g} CPUs: the model actor and the decoding "
                           f"tasks ({options.read_cpus:g} CPU each) must run side by side, or the job hangs")
    actors = options.actors or len(usable)
    per_node = -(-actors // len(usable))  # ceil: actors spread over the usable nodes
    cpus = min(usable)
    actor_cpus = (cpus - options.read_cpus) / per_node
    if actor_cpus >= 1:
        actor_cpus = float(int(actor_cpus))
    return Plan("cpu", actors, actor_cpus, 0.0, threads or max(1, int(cpus // per_node)))


def read_task_memory(batch_size: int, image_size: int) -> int:
    """Memory a decoding task asks for: a worker with torch and a runtime loaded (450-670 MB
    measured), one large photo being decoded, its batch of float32 tensors twice. Being the decoding stage's own, it
    also keeps Ray from fusing decoding into the model actors (Ray fuses consecutive operators
    whose resource requests are equal, which would serialise decoding and the model)."""
    return batch_size * 3 * image_size ** 2 * 4 * 2 + (768 << 20)


def unwrap(err: Exception) -> Exception:
    """The user's exception inside a Ray task error (its message is what the user must read)."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, Exception) else err


class Failure(NamedTuple):
    """A result that is an error message instead (see each_or_error)."""
    error: str


def each_or_error(fn: Callable[[Any], Sequence[Any]], images) -> list[Any]:
    """fn(images) -> one result per image. When the batch raises, each image is tried alone, and
    one that still raises gets a Failure: a bad image must never fail (and so drop) its block."""
    try:
        return list(fn(images))
    except Exception as err:
        if len(images) == 1:
            return [Failure(f"model failed on this image ({type(err).__name__}: {err})")]
        return [result for i in range(len(images)) for result in each_or_error(fn, images[i:i + 1])]

"""Data-parallel training over torch.distributed, launched by torchrun: the process group from
torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK; gloo on CPU, nccl on CUDA) and the few
collective steps the training loop takes. Every helper is a no-op when no process group is
initialised, so one process runs the very same loop, with the same results as before DDP.

Gradients are averaged by one all-reduce of the flattened gradients after backward, which is
what the DistributedDataParallel wrapper's reducer does, without the wrapper: it hooks only
`forward()`, and SCST computes its gradients through the decoders' start/step/forward_rows
methods, so one explicit call serves both training phases."""
from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def launched() -> bool:
    """True under torchrun (or any launcher that sets its environment variables)."""
    return "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def torchrun_command(nproc: int, module: str, args: list[str]) -> list[str]:
    """`python -m torch.distributed.run` running `python -m module args` on nproc local processes;
    --standalone picks a free port, so several runs on one machine do not collide."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", module, *args]


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def process_group(device_type: str) -> Iterator[None]:
    """Join the process group torchrun describes for the duration of the block: gloo when training
    on CPU, nccl on CUDA (each local rank on its own GPU). On CPU each rank gets an equal share
    of the cores as torch threads, so N ranks do not oversubscribe them. With one process (no
    torchrun, or WORLD_SIZE=1) nothing is joined and nothing changes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        yield
        return
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if device_type == "cuda":
        if local_world > torch.cuda.device_count():
            raise ValueError(f"{local_world} processes on this node but {torch.cuda.device_count()} GPU(s): run at "
                             f"most one process per GPU (train.nproc / --nproc-per-node), or set train.device: cpu")
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        torch.set_num_threads(max(1, cpu_cores() // local_world))
        backend = "gloo"
    dist.init_process_group(backend)  # env:// : MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE from torchrun
    logger.info("rank %d of %d (%s, %d torch threads)", rank(), world_size(), backend, torch.get_num_threads())
    try:
        yield
        # Every rank done before any tears the group down: in one CI run a rank that left first
        # was aborted in gloo's teardown ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0 validates, logs the metrics and writes the checkpoint."""
    return rank() == 0


def rank_seed(seed: int) -> int:
    """The seed of this rank's random streams (dropout masks, SCST samples): `seed` on rank 0, which
    so starts exactly as one process does, an independent one (numpy's SeedSequence) elsewhere."""
    return seed if rank() == 0 else int(np.random.SeedSequence((seed, rank())).generate_state(1)[0])


def shard(batches: list[torch.Tensor], min_size: int = 1) -> list[torch.Tensor]:
    """This rank's share of every batch: every world_size-th item, so the shares of a batch sorted
    by caption length have alike lengths (and alike compute). Each batch stays one optimizer
    update, as with one process; a batch too small to give every rank `min_size` items is
    skipped on every rank, so all ranks take the same number of steps."""
    n, r = world_size(), rank()
    return [batch[r::n] for batch in batches if len(batch) >= min_size * n]


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace each gradient by its mean over the ranks (one all-reduce of a flat buffer). A
    parameter without a gradient on this rank counts as zero (another rank may have one)."""
    n = world_size()
    if n == 1:
        return
    params = [p for p in params if p.requires_grad]
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= n
    for p, grad in zip(params, flat.split([p.numel() for p in params])):
        p.grad = grad.view_as(p)


def broadcast(value: Any) -> Any:
    """Rank 0's value (any picklable object) on every rank: a validation score, a batch order."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every rank's module, in place."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def all_sum(*values: float) -> tuple[float, ...]:
    """Each value summed over the ranks (e.g. a loss total and its count, for an epoch's mean)."""
    if world_size() == 1:
        return values
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, values)
    return tuple(sum(column) for column in zip(*gathered))

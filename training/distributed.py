"""Data-parallel training under `torchrun`: the one module that knows about ranks.

`torchrun --nproc_per_node N -m mmserve.cli train ...` starts N copies of a trainer with
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR in their environment. `data_parallel` (a
decorator on each trainer) joins them into one process group: NCCL when the processes
train on GPUs, gloo on CPUs. Without torchrun's variables every function here is the
single-process case (rank 0 of 1), so a plain `mmserve train` runs exactly as before.

How the work is split, the same for text, speech and CLIP:

* `--batch-size` is per process, as usual under torchrun: the global batch is batch size x
  world size. Every rank walks the same seeded sequence of global batches and trains on
  its slice of each (`shard`), so N processes with batch size B/N take the same optimizer
  steps on the same global batches as one process with batch size B;
* gradients are averaged by DistributedDataParallel (`wrap`);
* every rank scores the dev split on its identical weights, so all ranks agree on the best
  epoch without a message; only rank 0 writes files (`from_main`), prints and draws
  progress bars. The other ranks' stdout is closed for the rest of the process: their
  report would repeat rank 0's word for word. Errors still reach everyone's stderr.
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def local_world_size() -> int:
    """Processes on this machine: they share its cores."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if active() else 1


def _launched_by_torchrun() -> bool:
    return all(name in os.environ for name in _TORCHRUN_VARIABLES)


class data_parallel(contextlib.ContextDecorator):
    """Join torchrun's process group for the duration of a training run (a no-op without torchrun).

    The group is created here and destroyed on the way out, also when the run fails, so a
    failed rank does not leave the others waiting on a group nobody tears down.
    """

    def __enter__(self) -> "data_parallel":
        self.started = False
        if active() or not _launched_by_torchrun():
            return self
        on_gpu = torch.cuda.is_available()
        if on_gpu:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl" if on_gpu else "gloo")
        self.started = True
        if not is_main():
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- kept for the life of the worker
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started and active():
            dist.destroy_process_group()


def device() -> torch.device:
    """Where this process trains: its own GPU under NCCL, else the CPU."""
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard(batch: Sequence[T]) -> list[T]:
    """This rank's part of a global batch. A batch smaller than the world is repeated so every
    rank takes every step (DDP's gradient exchange needs all of them)."""
    items = list(batch)
    size = world_size()
    if size == 1:
        return items
    if len(items) < size:
        items = (items * size)[:size]
    return items[rank() :: size]


def wrap(model: torch.nn.Module, find_unused_parameters: bool = False) -> torch.nn.Module:
    """DistributedDataParallel around `model` (weights broadcast from rank 0), or `model` alone.

    Trainers keep the unwrapped model for evaluating and saving; only the training step
    goes through the wrapper, whose backward averages the gradients of every rank.
    """
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.cuda.current_device()] if device().type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def mean(value: float) -> float:
    """The mean of a per-rank number (e.g. each rank's training loss) over all ranks."""
    if not active():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device())
    dist.all_reduce(tensor)
    return float(tensor.item()) / world_size()


def from_main(action: Callable[[], T]) -> T:
    """Run `action` on rank 0 only and hand its result, or its exception, to every rank.

    The file side of a run (refusing an occupied --out, writing a checkpoint, reading the
    resume state) happens once, on rank 0; the broadcast doubles as the barrier after it, so
    no rank runs ahead of a write, and an error there stops all ranks with the same message
    instead of leaving them waiting.
    """
    if not active():
        return action()
    box: list[Any] = [None]
    if is_main():
        try:
            box[0] = (True, action())
        except Exception as error:  # handed to every rank, raised there
            box[0] = (False, error)
    dist.broadcast_object_list(box, src=0, device=device() if device().type == "cuda" else None)
    ok, payload = box[0]
    if not ok:
        raise payload
    return payload

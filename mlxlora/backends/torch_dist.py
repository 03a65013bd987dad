"""Data parallelism for the torch backend under `torchrun` (or accelerate, which sets the same
variables): every process reads the same batches in the same order (the data order depends on
the seed only), takes its share of each batch's rows, and the gradients are summed across
processes before each update. Gloo on CPUs, NCCL on GPUs.

Each rank's share of the loss is divided by the whole batch's label count, so the summed
gradient and loss equal one process training on the whole batch.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init() -> None:
    """Join the process group torchrun describes (once); nothing for a single process. On
    GPUs each process's current device is its own (cuda:LOCAL_RANK), where its streams,
    events and NCCL's communicator live."""
    if world_size() > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def describe() -> str:
    """What to add to the device's name: the process count of a data-parallel job."""
    return f", {world_size()} processes ({dist.get_backend()})" if world_size() > 1 else ""


def my_rows(batch_rows: int) -> slice:
    """The rows of each batch this process trains on: every world_size-th from its rank."""
    return slice(rank(), batch_rows, world_size())


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sum_gradients(params: list[torch.Tensor]) -> None:
    """Sum every parameter's gradient across processes (a rank without rows adds zeros)."""
    if world_size() == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()

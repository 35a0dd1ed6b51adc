"""torchrun support: one process per device, DistributedDataParallel, nothing home-made."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from stargon.model.devices import pick_device


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_request: str = "auto") -> Context:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPU), if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_request)
    if world_size == 1:
        return Context(0, 1, device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    rank = dist.get_rank()
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    return Context(rank, world_size, device)


def finish() -> None:
    """Leave the process group together: a rank that tears down while another still writes its
    checkpoint can abort gloo's threads (seen as SIGABRT in CI), so all ranks meet first. Only
    called after success; after a failure a barrier would hang, and torchrun stops the rest."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def sum_over_ranks(tensor: torch.Tensor, context: Context) -> torch.Tensor:
    """The sum of every rank's tensor, on every rank (e.g. radial velocities, each rank
    filling its own share of a zero array)."""
    if context.world_size > 1:
        dist.all_reduce(tensor)
    return tensor


def global_mean(value: torch.Tensor, context: Context) -> torch.Tensor:
    """The mean over processes of a per-process mean (equal shares of the global batch)."""
    value = value.detach().clone()
    if context.world_size > 1:
        dist.all_reduce(value)
        value /= context.world_size
    return value


def gather_objects(value: object, context: Context) -> list:
    """Every rank's `value` (picklable), in rank order, on every rank."""
    if context.world_size == 1:
        return [value]
    gathered: list = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered

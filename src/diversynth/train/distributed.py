"""Process-group setup for `torchrun` (DDP); a single process needs none of it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def current() -> Ranks:
    """This process's place, from the variables torchrun sets (none: one process)."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return Ranks()


def init_from_env() -> Ranks:
    """Join the process group torchrun describes: NCCL with GPUs, gloo on CPUs."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return current()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return current()


@contextlib.contextmanager
def process_group() -> Iterator[Ranks]:
    """The process group torchrun describes, for the block (none for one process)."""
    ranks = init_from_env()
    try:
        yield ranks
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def mean_across(value: torch.Tensor, ranks: Ranks) -> float:
    """The mean of a scalar over all processes (for the logged loss)."""
    if ranks.distributed:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= ranks.world
    return value.item()

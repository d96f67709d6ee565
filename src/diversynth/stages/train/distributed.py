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
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    store = _attempt_store()
    if store is None:
        dist.init_process_group(backend)
    else:
        dist.init_process_group(backend, store=store, rank=int(os.environ["RANK"]),
                                world_size=int(os.environ["WORLD_SIZE"]))  # fmt: skip
    return current()


def _attempt_store() -> dist.Store | None:
    """The store of torchrun's agent, under a prefix of its own for each restart; None
    when torchrun does not share its store (`TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`, or a
    launcher other than torchrun).

    torchrun (c10d rendezvous) lets its workers use the rendezvous store, the same one
    across restarts; a group started again after a lost worker then reads the addresses
    the last group's processes published there, dials the dead process's port and fails
    (`Gloo connectFullMesh failed ... Connection refused`). A prefix per restart count
    makes each attempt's keys its own, so `--max-restarts N` recovers."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          int(os.environ["WORLD_SIZE"]), is_master=False)  # fmt: skip
    return dist.PrefixStore(f"/diversynth/attempt_{attempt}", agent)


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

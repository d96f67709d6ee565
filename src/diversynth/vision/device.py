"""Device and dtype selection shared by every model loader."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """The configured dtype; on the CPU always float32 (half precision is slow or unsupported)."""
    if device.type == "cpu":
        return torch.float32
    return DTYPES[name]


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block on `count` CPU threads (None: leave torch's setting), then restore."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)

"""Device and dtype selection shared by every model loader."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from diversynth.errors import UsageError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class DeviceError(UsageError):
    pass


def device_problem(name: str) -> str | None:
    """Why the device a setting names is not on this machine (None: it is)."""
    device = torch.device(name) if name != "auto" else None
    if device is None or device.type == "cpu":
        return None
    if device.type == "mps":
        return None if torch.backends.mps.is_available() else "no MPS device here"
    if not torch.cuda.is_available():
        return f"{name}, but torch sees no CUDA device on this machine (use auto or cpu)"
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        return f"{name}, but this machine has {count} CUDA device(s): cuda:0 to cuda:{count - 1}"
    return None


def pick_device(name: str = "auto", setting: str = "device") -> torch.device:
    """The device a setting names (auto: a GPU when there is one); DeviceError, naming the
    setting, when it is not here."""
    problem = device_problem(name)
    if problem:
        raise DeviceError(f"{setting}: {problem}")
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

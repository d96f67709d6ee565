"""Device and dtype selection shared by every model loader."""

from __future__ import annotations

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

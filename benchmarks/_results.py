"""What every benchmark records beside its numbers: the machine, and where the JSON goes."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> str:
    """CPU count, GPU name (the card matters for every GPU figure), torch version."""
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()}, {os.cpu_count()} CPUs, {gpu}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")  # fmt: skip


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Print the result and write it to benchmarks/results/NAME.json."""
    text = json.dumps(result, indent=2) + "\n"
    print(text, end="")
    out = RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out.relative_to(ROOT)}")
    return out

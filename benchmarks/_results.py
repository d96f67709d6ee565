"""What every benchmark records beside its numbers (the machine, where the JSON goes), and
the timing helpers the device benchmarks share."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# smoke runs (the test suite's) write elsewhere, so the recorded figures stay as measured
RESULTS = Path(os.environ.get("DIVERSYNTH_BENCHMARK_RESULTS", ROOT / "benchmarks" / "results"))
START = time.perf_counter()


def log(what: str) -> None:
    """Progress with elapsed seconds: where a time-boxed run spends its time."""
    print(f"[{time.perf_counter() - START:7.1f} s] {what}", flush=True)


def sync(device: Any) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so wall time measures it."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], Any], device: Any, repeats: int, warmup: int = 2) -> float:
    """Median wall seconds of `fn` over `repeats` calls after `warmup` untimed ones."""
    times = []
    for i in range(warmup + repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu() -> str:
    """The CPU's model and widest vector units (machines of one kind differ: AVX2 only,
    AVX-512, AMX), with the CPU count."""
    model, flags = platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:  # not Linux
        pass
    units = [name for name, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AMX", "amx_tile"))
             if flag in flags]  # fmt: skip
    return f"{model} ({', '.join(units) or 'no AVX2'}), {os.cpu_count()} CPUs"


def machine() -> str:
    """CPU, GPU name (the card matters for every GPU figure), torch version."""
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu()}, {gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def write_result(name: str, result: dict[str, Any], show: bool = True) -> Path:
    """Write the result to benchmarks/results/NAME.json (or to the folder
    DIVERSYNTH_BENCHMARK_RESULTS names); print it when `show`."""
    text = json.dumps(result, indent=2) + "\n"
    out = RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    if show:
        print(text, end="")
        print(f"wrote {out}")
    return out

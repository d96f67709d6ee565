"""Where auxiliary BN's extra time goes: the device kernels of one training step of plain
and aux-BN models, and one BN layer's forward + backward alone, at the shapes of ResNet-50.

    python benchmarks/aux_bn_kernels.py                      # GPU: resnet50, bf16, batch 256
    python benchmarks/aux_bn_kernels.py --model resnet18 --batch 16 --size 64   # CPU smoke

Prints, per model, the step time and the kernels that take the most device time (which
kernels plain BN runs, cuDNN's or aten's own, and which the fused aux form runs, with and
without its one-pass input-gradient kernel: `aux`, `aux_aten`), and per layer shape the
median forward + backward seconds of plain BN and of both aux forms with the batch half
real, half synthetic. Writes benchmarks/results/aux_bn_kernels_<device>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path

import torch
from _results import median_seconds, sync, write_result
from torch.profiler import ProfilerActivity, profile
from train_speed import header, model_and_batch

from diversynth.models import aux_bn
from diversynth.models.aux_bn import convert_aux_bn, real_first

ROOT = Path(__file__).resolve().parents[1]


def step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, dtype):
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        with (
            torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=bool(dtype)),
            real_first(model, x.shape[0] // 2),
        ):
            loss = loss_fn(model(x), y)
        model.zero_grad(set_to_none=True)
        loss.backward()

    return step


def top_kernels(fn, device: torch.device, steps: int, top: int) -> list[dict]:
    """The kernels (device) or ops (CPU) taking the most self time, per step."""
    activities = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    return [
        {"name": e.key[:120], "ms_per_step": round(getattr(e, key) / 1000 / steps, 3),
         "calls_per_step": e.count // steps}
        for e in events[:top]
    ]  # fmt: skip


def layer_times(channels: int, hw: int, batch: int, device, dtype, repeats: int) -> dict:
    """Forward + backward of one BN layer on a channels_last batch: plain, aux, and aux
    without the one-pass input-gradient kernel (aux_aten)."""
    x = torch.randn(batch, channels, hw, hw, device=device, dtype=dtype or torch.float32)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    grad = torch.randn_like(x)
    plain = torch.nn.BatchNorm2d(channels).to(device)
    aux = convert_aux_bn(torch.nn.Sequential(copy.deepcopy(plain))).to(device)
    out = {}
    for name, layer in (("plain", plain), ("aux", aux), ("aux_aten", aux)):

        def run(layer=layer, name=name) -> None:
            split = real_first(layer, batch // 2) if name != "plain" else contextlib.nullcontext()
            with split, one_pass(name != "aux_aten"):
                layer(x).backward(grad)

        out[name] = median_seconds(run, device, repeats) * 1000
    return {"ms": {k: round(v, 3) for k, v in out.items()},
            "aux_over_plain_time": round(out["aux"] / out["plain"], 3),
            "aux_aten_over_plain_time": round(out["aux_aten"] / out["plain"], 3)}  # fmt: skip


@contextlib.contextmanager
def one_pass(on: bool) -> Iterator[None]:
    """Aux BN's one-pass input-gradient kernel (a GPU's) on or off within the block."""
    aux_bn.ONE_PASS_INPUT_GRAD = on
    try:
        yield
    finally:
        aux_bn.ONE_PASS_INPUT_GRAD = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    device, dtype, base, x, y = model_and_batch(args)
    result = header("aux_bn_kernels.py", dtype)
    result["cudnn"] = torch.backends.cudnn.version() if device.type == "cuda" else None
    name = "aux_bn_kernels_" + ("gpu" if device.type == "cuda" else "cpu")
    for label in ("plain", "aux", "aux_aten"):
        model = copy.deepcopy(base) if label == "plain" else convert_aux_bn(copy.deepcopy(base))
        model = model.to(device).to(memory_format=torch.channels_last).train()
        step = step_fn(model, x, y, dtype)
        with one_pass(label != "aux_aten"):
            result[label] = {
                "step_ms": round(median_seconds(step, device, 5) * 1000, 2),
                "top_kernels": top_kernels(step, device, 2, args.top),
            }
        print(label, result[label]["step_ms"], "ms/step", flush=True)
        for row in result[label]["top_kernels"]:
            print(f"  {row['ms_per_step']:8.3f} ms  x{row['calls_per_step']:<4} {row['name']}")
        write_result(name, result)
        del model
    scale = args.size / 224
    shapes = [(64, 112), (256, 56), (512, 28), (1024, 14), (2048, 7)]
    result["one_layer_fwd_bwd"] = {
        f"{c}x{max(1, round(hw * scale))}": layer_times(
            c, max(1, round(hw * scale)), args.batch, device, dtype, 10
        )
        for c, hw in shapes
    }
    print(result["one_layer_fwd_bwd"], flush=True)
    write_result(name, result)


if __name__ == "__main__":
    main()

"""Does auxiliary BN help when the extra images come from another domain? Fashion-MNIST.

Offline there are no real synthetic images to train on, so a *proxy* stands in for them:
other Fashion-MNIST training images (correct labels) rendered with shifted statistics:
lower contrast, brighter, with a noise texture. It is a proxy for the statistics gap of
synthetic images only, not for their content. Three settings, each with the same real
images, the same steps and the same real images per batch:

- real only: batches of `--real` real images;
- real + proxy, shared BN: each batch adds `--extra` proxy images;
- real + proxy, auxiliary BN: the same batches, proxy images through their own BN.

Top-1 on the real Fashion-MNIST test set, mean and spread over seeds, is written to
benchmarks/results/aux_bn_shift.json, whichever way it comes out.

    .venv/bin/python benchmarks/aux_bn_shift.py [--train 2000] [--epochs 4] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F

from diversynth.realdata import FASHION_FILES, read_idx
from diversynth.train.aux_bn import convert_aux_bn, real_first

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _results import write_result  # noqa: E402

DATA = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.286, 0.353  # Fashion-MNIST training pixels


def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = (read_idx(DATA / name) for name in FASHION_FILES[split])
    x = torch.from_numpy(np.array(images)).float().div(255).unsqueeze(1)
    return x, torch.from_numpy(np.array(labels)).long()


def proxy_domain(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Lower contrast, brighter, and a fixed-seed noise texture."""
    gen = torch.Generator().manual_seed(seed)
    texture = F.avg_pool2d(torch.randn(x.shape, generator=gen), 3, 1, 1) * 0.35
    return (0.45 * x + 0.35 + texture).clamp(0, 1)


def prepare(x: torch.Tensor) -> torch.Tensor:
    """Normalised, 32 px, three channels (what the timm model takes)."""
    x = F.interpolate((x - MEAN) / STD, size=32, mode="bilinear", align_corners=False)
    return x.expand(-1, 3, -1, -1).contiguous()


def train_one(setting: str, seed: int, data: dict[str, torch.Tensor], args) -> float:
    torch.manual_seed(seed)
    model = timm.create_model(args.model, num_classes=10)
    if setting == "aux BN":
        convert_aux_bn(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                                weight_decay=5e-4)  # fmt: skip
    steps = args.epochs * (len(data["real_y"]) // args.real)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.05, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        if step % (len(data["real_y"]) // args.real) == 0:
            order = torch.randperm(len(data["real_y"]), generator=gen)
        part = order[(step % (len(data["real_y"]) // args.real)) * args.real :][: args.real]
        x, y = data["real_x"][part], data["real_y"][part]
        if setting != "real only":
            pick = torch.randint(0, len(data["proxy_y"]), (args.extra,), generator=gen)
            x = torch.cat([x, data["proxy_x"][pick]])
            y = torch.cat([y, data["proxy_y"][pick]])
        flip = torch.rand(len(x), generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        with real_first(model, args.real):
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        hits = sum(
            int((model(data["test_x"][i : i + 500]).argmax(1) == data["test_y"][i : i + 500]).sum())
            for i in range(0, len(data["test_y"]), 500)
        )
    return 100 * hits / len(data["test_y"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet10t")
    parser.add_argument("--train", type=int, default=2000, help="real training images")
    parser.add_argument("--proxy", type=int, default=4000, help="proxy images (2x the real set)")
    parser.add_argument("--test", type=int, default=5000)
    parser.add_argument("--real", type=int, default=32, help="real images per batch")
    parser.add_argument("--extra", type=int, default=32, help="proxy images per batch")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    x, y = load("train")
    test_x, test_y = load("test")
    data = {
        "real_x": prepare(x[: args.train]), "real_y": y[: args.train],
        "proxy_x": prepare(proxy_domain(x[args.train : args.train + args.proxy], 1234)),
        "proxy_y": y[args.train : args.train + args.proxy],
        "test_x": prepare(test_x[: args.test]), "test_y": test_y[: args.test],
    }  # fmt: skip
    results: dict[str, list[float]] = {}
    start = time.perf_counter()
    for seed in args.seeds:
        for setting in ("real only", "shared BN", "aux BN"):
            top1 = train_one(setting, seed, data, args)
            results.setdefault(setting, []).append(round(top1, 2))
            print(f"seed {seed} {setting}: top-1 {top1:.2f}%", flush=True)
    summary = {
        setting: {"top1": values, "mean": round(statistics.mean(values), 2),
                  "stdev": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0}
        for setting, values in results.items()
    }  # fmt: skip
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU",
        "command": "python benchmarks/aux_bn_shift.py "
        f"--model {args.model} --train {args.train} --proxy {args.proxy} --test {args.test} "
        f"--real {args.real} --extra {args.extra} --epochs {args.epochs} "
        f"--seeds {' '.join(map(str, args.seeds))}",
        "proxy": "other Fashion-MNIST training images at 0.45x contrast, +0.35 brightness, "
        "with a blurred noise texture (sd 0.35): a stand-in for the statistics gap of "
        "synthetic images, not for their content",
        "real_test_top1": summary,
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_result("aux_bn_shift", result)


if __name__ == "__main__":
    main()

"""Training speed with auxiliary BN against plain BN: same timm model, same batches, one run.

Times SGD training steps (forward, backward, step) of the model as timm builds it and of
the same model after `convert_aux_bn`, on mixed batches (real first, synthetic after),
alternating the two in rounds, and prints images/s and the ratio of the medians.

    .venv/bin/python benchmarks/aux_bn_speed.py [--model resnet18] [--batch 64] [--size 64]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import timm
import torch

from diversynth.train.aux_bn import convert_aux_bn, real_first

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _results import write_result  # noqa: E402


def steps_per_second(model, batch, labels, real: int, steps: int) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        with real_first(model, real):
            loss = loss_fn(model(batch), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--real", type=int, default=32, help="real images first in each batch")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    plain = timm.create_model(args.model, num_classes=100).to(memory_format=torch.channels_last)
    aux = convert_aux_bn(copy.deepcopy(plain))
    batch = torch.randn(args.batch, 3, args.size, args.size).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 100, (args.batch,))
    for model in (plain, aux):  # warm-up
        steps_per_second(model, batch, labels, args.real, 2)
    rates: dict[str, list[float]] = {"plain": [], "aux": []}
    for _ in range(args.rounds):
        rates["plain"].append(steps_per_second(plain, batch, labels, args.real, args.steps))
        rates["aux"].append(steps_per_second(aux, batch, labels, args.real, args.steps))
    images = {k: statistics.median(v) * args.batch for k, v in rates.items()}
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU, "
        f"torch {torch.__version__} threads {torch.get_num_threads()}",
        "command": f"python benchmarks/aux_bn_speed.py --model {args.model} --batch {args.batch} "
        f"--real {args.real} --size {args.size} --steps {args.steps} --rounds {args.rounds}",
        "images_per_second": {k: round(v, 1) for k, v in images.items()},
        "aux_over_plain": round(images["aux"] / images["plain"], 3),
    }
    write_result("aux_bn_speed_cpu", result)


if __name__ == "__main__":
    main()

"""Training throughput on one device: auxiliary BN against plain BN, and the data loader
against tensors already on the device. Both comparisons in one run, on the same device.

0. A check that auxiliary BN's fused kernels give what two separate BNs give on this
   device (one training step of each, with the precision the timings use).
1. Model steps (forward, backward, SGD step) on a fixed batch already on the device:
   timm's model as built (`plain`) against the same model after `convert_aux_bn` (`aux`),
   and against aux BN done the obvious way, cat([main(real), aux(synthetic)]) (`aux_cat`,
   as timm's split BN does it), with the batch half real and half synthetic; eager, and
   with `--compile` under `torch.compile` too. Rounds alternate; ratios are of medians.
2. diversynth's training input path (real + synthetic JPEG shards read by byte offset,
   seeded augmentation) both ways, `train.decode_on` workers (DataLoader workers decode and
   augment) and device (the workers read the bytes; one batched decode, crop and resize on
   the device; `--decode-on` picks): each loader alone, and feeding the aux-BN model,
   against the same model on a batch already on the device.

GPU (the figures the training issue asks for):
    python benchmarks/train_speed.py --model resnet50 --batch 256 --size 224 --compile --workers 14
One part alone (`--only eager|loader|compiled`, repeatable) writes a file named after it.
CPU smoke run:
    .venv/bin/python benchmarks/train_speed.py --model resnet18 --batch 16 --size 64 \
        --steps 3 --rounds 2 --images 128 --workers 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import timm
import torch
from _results import log, machine, sync, write_result
from PIL import Image
from torch.utils.data import DataLoader

from diversynth.config import TrainConfig
from diversynth.models import aux_bn, aux_bn_kernel
from diversynth.models.aux_bn import AuxBatchNorm, convert_aux_bn, real_first
from diversynth.run.artifacts.shards import ShardWriter, encode_jpeg
from diversynth.stages.train.data import train_transform
from diversynth.stages.train.device_augment import loader_parts
from diversynth.stages.train.sampling import MixedBatches
from diversynth.stages.train.synthetic import ShardImages


def model_and_batch(args: argparse.Namespace) -> tuple:
    """The device, its training precision (bf16 autocast on a GPU, float32 on the CPU), the
    timm model (100 classes) and one channels_last batch on the device."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else None
    torch.manual_seed(0)
    base = timm.create_model(args.model, num_classes=100)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (args.batch,), device=device)
    return device, dtype, base, x, y


def header(script: str, dtype: torch.dtype | None) -> dict:
    return {
        "machine": machine(),
        "command": f"python benchmarks/{script} " + " ".join(sys.argv[1:]),
        "precision": str(dtype or "float32"),
    }


class Stepper:
    """One training step of a model: forward under autocast, backward, SGD."""

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        dtype: torch.dtype | None,
        compile_: bool,
        one_pass: bool = True,
    ):
        self.one_pass = one_pass  # aux BN's one-pass input-gradient kernel (GPU) on or off
        self.model = model.to(device).to(memory_format=torch.channels_last).train()
        self.forward = torch.compile(self.model) if compile_ else self.model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.device, self.dtype = device, dtype

    def __call__(self, x: torch.Tensor, y: torch.Tensor, real: int) -> None:
        with (
            torch.autocast(
                self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
            ),
            real_first(self.model, real),
        ):
            loss = self.loss_fn(self.forward(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        aux_bn.ONE_PASS_INPUT_GRAD = self.one_pass
        loss.backward()
        aux_bn.ONE_PASS_INPUT_GRAD = True
        self.optimizer.step()


def images_per_second(step: Stepper, batches, count: int, batch: int, real: int) -> float:
    sync(step.device)
    start = time.perf_counter()
    for _, (x, y) in zip(range(count), batches, strict=False):
        step(x, y, real)
    sync(step.device)
    return count * batch / (time.perf_counter() - start)


def use_fused(model: torch.nn.Module, fused: bool) -> torch.nn.Module:
    for layer in model.modules():
        if isinstance(layer, AuxBatchNorm):
            layer.fused = fused and layer.fused
    return model


def check_fused(base: torch.nn.Module, device: torch.device, dtype: torch.dtype | None) -> dict:
    """One training step of the fused aux-BN model and of the obvious one on this device:
    the largest differences in the input gradient and in the BN running statistics."""
    torch.manual_seed(1)
    x = torch.randn(16, 3, 64, 64, device=device).contiguous(memory_format=torch.channels_last)
    grads, models = [], []
    for fused in (True, False):
        model = use_fused(convert_aux_bn(copy.deepcopy(base)), fused).to(device).train()
        model = model.to(memory_format=torch.channels_last)
        inputs = x.clone().requires_grad_(True)
        with (
            torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
            real_first(model, 6),
        ):
            model(inputs).float().square().mean().backward()
        grads.append(inputs.grad.float())
        models.append(model)
    stats = [torch.cat([b.float().flatten() for b in m.buffers()]) for m in models]
    scale = grads[1].abs().max().item()
    return {
        "input_grad_max_diff_relative": (grads[0] - grads[1]).abs().max().item() / scale,
        "bn_stats_max_diff": (stats[0] - stats[1]).abs().max().item(),
    }


SECTIONS = ("eager", "loader", "compiled")
DECODE_ON = ("workers", "device")


def fixed_batches(x: torch.Tensor, y: torch.Tensor):
    while True:
        yield x, y


def write_shards(folder: Path, count: int, size: int, per_shard: int = 256) -> list[dict]:
    """JPEGs of smooth random images (noise JPEGs would decode slower than photos)."""
    rng = np.random.default_rng(0)
    rows = []
    for first in range(0, count, per_shard):
        name = f"{first // per_shard:06d}"
        writer = ShardWriter(folder, name)
        labels = {f"img{i:07d}": i % 100 for i in range(first, min(first + per_shard, count))}
        for key, label in labels.items():
            small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
            image = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
            writer.write(key, encode_jpeg(image, 90, None), {"class_index": label})
        for key, (offset, length) in writer.close().items():  # as the manifest records them
            rows.append({"key": key, "shard": name, "class_index": labels[key],
                         "jpg_offset": offset, "jpg_size": length})  # fmt: skip
        writer.commit({})
    return rows


PREFETCH = 4  # batches each loader worker keeps ready


def loader_batches(folder: Path, rows: list[dict], args, device: torch.device, decode_on: str):
    """Training batches on the device, decoded as `train.decode_on` says."""
    cfg = TrainConfig(model=args.model, image_size=args.size, decode_on=decode_on)
    transform = train_transform(cfg)
    table = pa.Table.from_pylist(rows)
    half = ShardImages(folder, table[: len(rows) // 2], transform)  # stands in for real
    synthetic = ShardImages(folder, table[len(rows) // 2 :], transform)
    samples, collate, on_device = loader_parts(half, synthetic, cfg, device)
    sampler = MixedBatches(
        len(half), len(synthetic), args.batch // 2, args.batch // 2, seed=0, epochs=1000
    )
    loader = DataLoader(
        samples,
        batch_sampler=sampler,
        num_workers=args.workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
        prefetch_factor=PREFETCH if args.workers else None,
    )
    for x, y, _ in loader:
        x = on_device(x) if on_device is not None else x.to(device, non_blocking=True)
        yield x.contiguous(memory_format=torch.channels_last), y.to(device, non_blocking=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--no-compiled-cat", action="store_true",
                        help="compile plain and aux only, not the obvious form")  # fmt: skip
    parser.add_argument("--only", action="append", choices=SECTIONS,
                        help="run this section (repeatable; results go to a file named "
                             "after them); default: all, compiled with --compile")  # fmt: skip
    parser.add_argument("--images", type=int, default=4096, help="JPEGs written for part 2")
    parser.add_argument("--decode-on", nargs="+", choices=DECODE_ON, default=list(DECODE_ON),
                        help="the input paths part 2 times (train.decode_on)")  # fmt: skip
    args = parser.parse_args()
    sections = args.only or [s for s in SECTIONS if s != "compiled" or args.compile]
    device, dtype, base, x, y = model_and_batch(args)
    result = header("train_speed.py", dtype)

    try:
        result["fused_aux_bn_check"] = check_fused(base, device, dtype)
        fused = True
    except RuntimeError as exc:  # keep timing the obvious form; report why
        result["fused_aux_bn_check"] = {"error": str(exc).splitlines()[0]}
        fused = False
    log(f"fused check: {result['fused_aux_bn_check']}")

    def aux_model(fused: bool) -> torch.nn.Module:
        return use_fused(convert_aux_bn(copy.deepcopy(base)), fused)

    # Cheap sections first and the result rewritten after each, so that a run stopped at a
    # time limit (compiling three models is the slow part) keeps what it measured.
    name = "train_speed_" + ("gpu" if device.type == "cuda" else "cpu")
    if args.only:  # a partial run must not overwrite a full run's file
        name += "_" + "_".join(sections)
    if "eager" in sections:
        result["aux_bn_eager"] = time_aux_bn(
            base, aux_model, fused, x, y, args, device, dtype, False
        )
        write_result(name, result)
    if "loader" in sections:
        result["data_loader"] = time_loader(step_model=aux_model(fused), x=x, y=y, args=args,
                                            device=device, dtype=dtype, result=result)  # fmt: skip
        write_result(name, result)
    if "compiled" in sections:
        result["aux_bn_compiled"] = time_aux_bn(
            base, aux_model, fused, x, y, args, device, dtype, True
        )
        write_result(name, result)


def loader_images_per_second(batches, count: int, batch: int, device: torch.device) -> float:
    """The input path alone: its batches taken and dropped."""
    sync(device)
    start = time.perf_counter()
    for _ in zip(range(count), batches, strict=False):
        pass
    sync(device)
    return count * batch / (time.perf_counter() - start)


def time_loader(step_model, x, y, args, device, dtype, result: dict) -> dict:
    """For each input path (`--decode-on`): the loader alone, and the aux model fed by it,
    against the same model on a batch already on the device, each a median of rounds.

    A path's rounds run back to back after its workers' prefetched batches are spent (a
    rate measured from a full queue would flatter the loader), and the resident rounds run
    with no loader alive (its workers would share the CPU with them)."""
    real = args.batch // 2
    step = Stepper(step_model, device, dtype, False)
    images_per_second(step, fixed_batches(x, y), 3, args.batch, real)  # warm-up
    paths = {}
    with tempfile.TemporaryDirectory() as tmp:
        rows = write_shards(Path(tmp), args.images, max(args.size, 256))
        log(f"{len(rows)} JPEGs written")
        for decode_on in args.decode_on:
            feed = loader_batches(Path(tmp), rows, args, device, decode_on)
            loader_images_per_second(feed, args.workers * PREFETCH + 2, args.batch, device)
            alone = [loader_images_per_second(feed, args.steps, args.batch, device)
                     for _ in range(args.rounds)]  # fmt: skip
            fed = [images_per_second(step, feed, args.steps, args.batch, real)
                   for _ in range(args.rounds)]  # fmt: skip
            feed.close()  # its workers end
            paths[decode_on] = {"loader_alone": statistics.median(alone),
                                "feeding_aux_model": statistics.median(fed)}  # fmt: skip
            log(f"decode_on {decode_on}: {paths[decode_on]}")
    resident = statistics.median(
        images_per_second(step, fixed_batches(x, y), args.steps, args.batch, real)
        for _ in range(args.rounds)
    )
    rates = {f"{kind}_decode_on_{path}": round(rate, 1)
             for path, kinds in paths.items() for kind, rate in kinds.items()}  # fmt: skip
    section: dict = {
        "workers": args.workers,
        "images_per_second": {"tensors_on_device": round(resident, 1), **rates},
        "fed_over_resident": {
            path: round(kinds["feeding_aux_model"] / resident, 3) for path, kinds in paths.items()
        },
    }
    if len(paths) == 2:
        section["device_over_workers"] = {
            kind: round(paths["device"][kind] / paths["workers"][kind], 3)
            for kind in ("loader_alone", "feeding_aux_model")
        }
    log(f"loader: {section}")
    return section


def time_aux_bn(base, aux_model, fused: bool, x, y, args, device, dtype, compiled: bool) -> dict:
    """Median images/s of plain, aux and aux_cat models in one mode; rounds alternate.
    Eager on a GPU, also aux without the one-pass input-gradient kernel (`aux_aten`: each
    half's gradient from aten, copied in). With --no-compiled-cat, compiled aux_cat is
    left out: a third compilation (over a minute for ResNet-50 on a GPU) that a time-boxed
    GPU session cannot afford."""
    real = args.batch // 2
    steppers = {
        "plain": Stepper(copy.deepcopy(base), device, dtype, compiled),
        "aux": Stepper(aux_model(fused), device, dtype, compiled),
    }
    if not compiled and aux_bn_kernel.usable(x, x):
        steppers["aux_aten"] = Stepper(aux_model(fused), device, dtype, False, one_pass=False)
    if not (compiled and args.no_compiled_cat):
        steppers["aux_cat"] = Stepper(aux_model(False), device, dtype, compiled)
    for name, step in steppers.items():  # warm-up (and compilation)
        images_per_second(step, fixed_batches(x, y), 3, args.batch, real)
        log(f"{name} warmed up" + (" (compiled)" if compiled else ""))
    rates: dict[str, list[float]] = {name: [] for name in steppers}
    for _ in range(args.rounds):
        for name, step in steppers.items():
            rates[name].append(
                images_per_second(step, fixed_batches(x, y), args.steps, args.batch, real)
            )
    medians = {name: statistics.median(v) for name, v in rates.items()}
    section = {
        "images_per_second": {k: round(v, 1) for k, v in medians.items()},
        **{f"{name}_over_plain": round(medians[name] / medians["plain"], 3)
           for name in steppers if name != "plain"},
    }  # fmt: skip
    log(f"{'compiled' if compiled else 'eager'}: {section}")
    return section


if __name__ == "__main__":
    main()

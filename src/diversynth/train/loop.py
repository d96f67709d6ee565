"""The `train` stage: a timm classifier on mixed batches of real and synthetic images.

Each batch holds `batch_size * (1 - synthetic_fraction)` real images and the rest
synthetic ones; an epoch is one pass over the real training set.
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import torch
from torch.utils.data import DataLoader

from diversynth.config import RunConfig
from diversynth.progress import progress_bar
from diversynth.rundir import RunDir, Timer, atomic_open, read_jsonl
from diversynth.train.aux_bn import convert_aux_bn, real_first
from diversynth.train.data import image_transform, real_dataset, synthetic_dataset
from diversynth.train.model import create_classifier, save_checkpoint
from diversynth.vision.device import pick_device


def _schedule(
    optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    warmup = max(1, total_steps // 20)
    return torch.optim.lr_scheduler.SequentialLR(
        optimizer,
        [
            torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=warmup),
            torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=max(1, total_steps - warmup)
            ),
        ],
        milestones=[warmup],
    )


def _optimizer(config: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    cfg = config.train
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
    )


def run_train(config: RunConfig, run: RunDir) -> dict[str, Any]:
    cfg = config.train
    torch.manual_seed(config.seed)
    device = pick_device(cfg.device)
    classes = read_jsonl(run.classes)
    transform = image_transform(cfg.image_size, train=True)
    real = real_dataset(config.data, "train", classes, transform)

    synthetic_per_batch = round(cfg.batch_size * cfg.synthetic_fraction)
    real_per_batch = cfg.batch_size - synthetic_per_batch
    shards = sorted(run.shards.glob("*.tar"))
    if not shards:
        synthetic_per_batch, real_per_batch = 0, cfg.batch_size
    real_loader = DataLoader(
        real,
        batch_size=real_per_batch,
        shuffle=True,
        drop_last=len(real) >= real_per_batch,
        num_workers=cfg.workers,
        generator=torch.Generator().manual_seed(config.seed),
    )
    synthetic_iter = None
    if synthetic_per_batch:
        stream = synthetic_dataset(shards, transform, config.seed)
        synthetic_iter = iter(
            DataLoader(stream.batched(synthetic_per_batch), batch_size=None, num_workers=0)
        )

    model = create_classifier(cfg.model, len(classes))
    aux_bn = cfg.aux_bn and synthetic_per_batch > 0
    if aux_bn:
        convert_aux_bn(model)
    model.to(device)
    optimizer = _optimizer(config, model)
    steps = len(real_loader) * cfg.epochs
    scheduler = _schedule(optimizer, steps)
    loss_fn = torch.nn.CrossEntropyLoss()
    timer = Timer()
    seen = {"real": 0, "synthetic": 0}
    run.train_dir.mkdir(parents=True, exist_ok=True)
    model.train()
    with atomic_open(run.train_metrics) as log, progress_bar() as bar:
        task = bar.add_task("train", total=steps, unit="steps")
        for step, (x_real, y_real) in enumerate(
            itertools.chain.from_iterable(real_loader for _ in range(cfg.epochs))
        ):
            x, y = x_real, y_real
            if synthetic_iter is not None:
                x_syn, y_syn = next(synthetic_iter)
                x, y = torch.cat([x_real, x_syn]), torch.cat([y_real, y_syn])
                seen["synthetic"] += len(y_syn)
            seen["real"] += len(y_real)
            with real_first(model, len(y_real)):
                loss = loss_fn(model(x.to(device)), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"train: loss is {loss.item()} at step {step}")
            record = {
                "step": step + 1,
                "loss": round(loss.item(), 5),
                "lr": scheduler.get_last_lr()[0],
            }
            log.write(json.dumps(record) + "\n")
            bar.advance(task)
    meta = {"model": cfg.model, "num_classes": len(classes), "image_size": cfg.image_size,
            "aux_bn": aux_bn}  # fmt: skip
    save_checkpoint(run.checkpoint, model, meta)
    return {
        "steps": steps,
        "real_images": seen["real"],
        "synthetic_images": seen["synthetic"],
        "aux_bn": aux_bn,
        "final_loss": record["loss"] if steps else None,
        "images_per_second": round((seen["real"] + seen["synthetic"]) / timer.seconds, 1),
    }

"""The `evaluate` stage: top-1 / top-5 of the trained classifier on the real test set."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from diversynth.config import RunConfig
from diversynth.progress import progress_bar
from diversynth.rundir import RunDir, read_jsonl, write_json
from diversynth.train.data import image_transform, real_dataset
from diversynth.train.model import load_checkpoint
from diversynth.vision.device import pick_device


@torch.inference_mode()
def topk_accuracy(
    model: torch.nn.Module, loader: DataLoader, device: torch.device, label: str
) -> dict[str, Any]:
    k = min(5, model.num_classes) if hasattr(model, "num_classes") else 5
    hits1 = hitsk = total = 0
    with progress_bar() as bar:
        task = bar.add_task(label, total=len(loader.dataset), unit="images")
        for x, y in loader:
            logits = model(x.to(device)).float().cpu()
            top = logits.topk(k, dim=1).indices
            hits1 += (top[:, 0] == y).sum().item()
            hitsk += (top == y[:, None]).any(dim=1).sum().item()
            total += len(y)
            bar.advance(task, len(y))
    return {
        "images": total,
        "top1": round(100 * hits1 / total, 3),
        f"top{k}": round(100 * hitsk / total, 3),
    }


def run_evaluate(config: RunConfig, run: RunDir) -> dict[str, Any]:
    device = pick_device(config.train.device)
    model, meta = load_checkpoint(run.checkpoint)
    model.to(device).eval()
    classes = read_jsonl(run.classes)
    test = real_dataset(
        config.data, "test", classes, image_transform(meta["image_size"], train=False)
    )
    loader = DataLoader(
        test, batch_size=config.evaluate.batch_size, num_workers=config.train.workers
    )
    set_name = f"{config.data.format}/test"
    results = {set_name: topk_accuracy(model, loader, device, f"evaluate {set_name}")}
    write_json(run.eval, {"model": meta, "sets": results})
    return {"sets": results}

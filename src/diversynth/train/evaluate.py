"""The `evaluate` stage: top-1 / top-5 on the real test set and on out-of-domain folders.

Sets with fewer classes than the model (ImageNet-R and -A: 200 of ImageNet's 1000) are
scored with the logits restricted to their classes, as their papers do. Images are
prepared the way the checkpoint records (size, normalisation, interpolation and centre
crop), whether diversynth trained it or its weights were imported.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from diversynth.artifacts.records import ClassIdentity, read_classes
from diversynth.config import RunConfig
from diversynth.errors import UsageError
from diversynth.preflight import timm_name_problem
from diversynth.progress import console, progress_bar
from diversynth.realdata import CatalogImageFolder, real_dataset
from diversynth.rundir import RunDir, write_json
from diversynth.safe_weights import refusing_pickles
from diversynth.train.data import eval_transform
from diversynth.train.model import load_checkpoint
from diversynth.vision.device import pick_device


class EvaluateError(UsageError, ValueError):
    pass


@torch.inference_mode()
def topk_accuracy(model: torch.nn.Module, loader: DataLoader, device: torch.device, label: str,
                  allowed: list[int] | None = None) -> dict[str, Any]:  # fmt: skip
    """Top-1 and top-5 (%); with `allowed`, every other class's logit is ruled out."""
    num_classes = getattr(model, "num_classes", None) or 1000
    k = min(5, len(allowed) if allowed is not None else num_classes)
    mask = None
    if allowed is not None:
        mask = torch.full((num_classes,), float("-inf"))
        mask[allowed] = 0.0
    hits1 = hitsk = total = 0
    with progress_bar() as bar:
        task = bar.add_task(label, total=len(loader.dataset), unit="images")
        for x, y in loader:
            logits = model(x.to(device)).float().cpu()
            if mask is not None:
                logits = logits + mask
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


def folder_set(root: Path, classes: list[dict[str, Any]], transform: Callable,
               restrict: bool | None) -> tuple[Dataset, list[int] | None]:  # fmt: skip
    """An out-of-domain folder and the classes its logits are restricted to (if any)."""
    dataset = CatalogImageFolder(root, classes, transform, require_all=False)
    present = sorted(set(dataset.class_to_idx.values()))
    if restrict is None:
        restrict = len(present) < len(classes)
    return dataset, present if restrict else None


def evaluate_on_sets(config: RunConfig, model: torch.nn.Module, meta: dict[str, Any],
                     classes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Top-1 / top-5 on the config's real test split (when it has a data section) and its
    out-of-domain sets."""
    device = pick_device(config.train.device)
    model.to(device).eval()
    transform = eval_transform(meta)
    sets: list[tuple[str, Dataset, list[int] | None]] = []
    if config.data is not None:
        test = real_dataset(config.data, "test", classes, transform)
        sets.append((f"{config.data.format}/test", test, None))
    for extra in config.evaluate.sets:
        sets.append((extra.name, *folder_set(extra.root, classes, transform, extra.restrict)))
    results = {}
    for name, dataset, allowed in sets:
        loader = DataLoader(dataset, batch_size=config.evaluate.batch_size,
                            num_workers=config.train.workers)  # fmt: skip
        results[name] = topk_accuracy(model, loader, device, f"evaluate {name}", allowed)
        if allowed is not None:
            results[name]["restricted_to_classes"] = len(allowed)
    _print_table(results)
    return results


def evaluate_model(config: RunConfig, classes: list[ClassIdentity], checkpoint: Path | None,
                   model: str | None, pretrained: bool) -> dict[str, Any]:  # fmt: skip
    """A checkpoint (diversynth's or imported) or a timm model, outside any run, on the
    config's test split and evaluation sets; class indices follow `classes`."""
    if checkpoint is not None:
        net, meta = load_checkpoint(checkpoint)
    else:
        net, meta = timm_model(str(model), pretrained, len(classes))
    if meta["num_classes"] != len(classes):
        raise EvaluateError(
            f"the model has {meta['num_classes']} classes; the config lists {len(classes)}"
        )
    return {"model": meta, "sets": evaluate_on_sets(config, net, meta, classes)}


def run_evaluate(config: RunConfig, run: RunDir) -> dict[str, Any]:
    model, meta = load_checkpoint(run.checkpoint)
    results = evaluate_on_sets(config, model, meta, read_classes(run))
    write_json(run.eval, {"model": meta, "sets": results})
    return {"sets": results}


def check_timm_name(name: str) -> None:
    problem = timm_name_problem(name)
    if problem:
        raise EvaluateError(f"--model: {problem}")


def timm_model(name: str, pretrained: bool, num_classes: int) -> tuple[torch.nn.Module, dict]:
    """Any timm model, with the preprocessing its pretrained config asks for."""
    import timm
    from timm.data import resolve_data_config

    check_timm_name(name)
    with refusing_pickles("--pretrained"):  # timm's weights of some models are pickles
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes)
    data = resolve_data_config({}, model=model)
    meta = {"model": name, "num_classes": num_classes, "image_size": data["input_size"][-1],
            "mean": list(data["mean"]), "std": list(data["std"]),
            "crop_pct": data["crop_pct"], "interpolation": data["interpolation"]}  # fmt: skip
    return model, meta


def _print_table(results: dict[str, dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table("set", "images", "top-1 %", "top-5 %", "classes", title="evaluation")
    for name, row in results.items():
        top5 = next((v for k, v in row.items() if k.startswith("top") and k != "top1"), "")
        table.add_row(name, str(row["images"]), str(row["top1"]), str(top5),
                      str(row.get("restricted_to_classes", "all")))  # fmt: skip
    console.print(table, markup=False)

"""The `evaluate` stage: top-1 / top-5 on the real test set and on out-of-domain folders.

Sets with fewer classes than the model (ImageNet-R and -A: 200 of ImageNet's 1000) are
scored with the logits restricted to their classes, as their papers do. Images are
prepared the way the checkpoint records (size, normalisation, interpolation and centre
crop), whether diversynth trained it or its weights were imported.
"""

from __future__ import annotations

from collections.abc import Sequence, Sized
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import DataLoader

from diversynth.config import FrequencyGroups, RunConfig
from diversynth.data.eval_sets import eval_transform, evaluation_sets
from diversynth.data.subset import train_counts as real_subset_counts
from diversynth.errors import UsageError
from diversynth.models.classifier import load_checkpoint, timm_model, topk_accuracy
from diversynth.models.device import pick_device
from diversynth.run.artifacts.records import ClassIdentity, read_classes
from diversynth.run.progress import console
from diversynth.run.rundir import RunDir, write_json


class EvaluateError(UsageError, ValueError):
    pass


def frequency_groups(class_top1: list[float | None], train_counts: list[int],
                     groups: FrequencyGroups) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Top-1 of many-shot, medium and few-shot classes (by real training images), each
    the mean of its classes' top-1 as the ImageNet-LT papers report it; classes the set
    lacks are left out."""

    def group(n: int) -> str:
        if n > groups.many_above:
            return "many"
        return "few" if n < groups.few_below else "medium"

    members: dict[str, list[float]] = {"many": [], "medium": [], "few": []}
    for top1, n in zip(class_top1, train_counts, strict=True):
        if top1 is not None:
            members[group(n)].append(top1)
    return {
        name: {"classes": len(values),
               "top1": round(sum(values) / len(values), 3) if values else None}
        for name, values in members.items()
    }  # fmt: skip


def evaluate_on_sets(config: RunConfig, model: torch.nn.Module, meta: dict[str, Any],
                     classes: Sequence[ClassIdentity],
                     run: RunDir | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Top-1 / top-5, mean per-class top-1, and top-1 by class frequency on the config's
    evaluation sets (`evaluation_sets`)."""
    device = pick_device(config.train.device, "train.device")
    model.to(device).eval()
    sets = evaluation_sets(config, run, classes, eval_transform(meta))
    train_counts = _train_counts(config, run, classes) if config.data is not None else None
    results: dict[str, dict[str, Any]] = {}
    for evaluation in sets:
        name, allowed = evaluation.name, evaluation.allowed
        # every set's dataset has a length (ListedImages, ArrayImages, an ImageFolder);
        # EvaluationSet declares torch's Dataset, which does not
        if not len(cast(Sized, evaluation.dataset)):
            left = " once the unreadable images are left out" if evaluation.unreadable else ""
            raise EvaluateError(f"evaluate: the set {name!r} has no images{left}")
        loader = DataLoader(evaluation.dataset, batch_size=config.evaluate.batch_size,
                            num_workers=config.train.workers)  # fmt: skip
        results[name] = topk_accuracy(model, loader, device, f"evaluate {name}", allowed)
        if allowed is not None:
            results[name]["restricted_to_classes"] = len(allowed)
        if config.data is not None and config.data.skip_unreadable:
            results[name]["unreadable_left_out"] = evaluation.unreadable
        if train_counts is not None:
            results[name]["groups"] = frequency_groups(
                results[name]["class_top1"], train_counts, config.evaluate.groups
            )
            results[name]["train_images_per_class"] = train_counts
    _print_table(results)
    return results


def _train_counts(config: RunConfig, run: RunDir | None,
                  classes: Sequence[ClassIdentity]) -> list[int] | None:  # fmt: skip
    """Real training images per class, for the frequency groups; None when the data has
    no training split (a folder of val/ only: evaluation goes on without the groups)."""
    data = config.data
    assert data is not None
    chosen = data.subset is not None and data.subset.chooses_train
    if data.format == "imagefolder" and not chosen and not (data.root / "train").is_dir():
        return None
    return real_subset_counts(config, run, classes).tolist()


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
    results = evaluate_on_sets(config, model, meta, read_classes(run), run)
    write_json(run.eval, {"model": meta, "sets": results})
    return {"sets": results}


def _print_table(results: dict[str, dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table("set", "images", "top-1 %", "top-5 %", "per-class %", "many", "medium",
                  "few", "classes", title="evaluation")  # fmt: skip
    for name, row in results.items():
        top5 = next((v for k, v in row.items() if k.startswith("top") and k != "top1"), "")
        groups = row.get("groups", {})
        by_group = [
            f"{g['top1']} ({g['classes']})" if g.get("top1") is not None else "-"
            for g in (groups.get(k, {}) for k in ("many", "medium", "few"))
        ]
        table.add_row(name, str(row["images"]), str(row["top1"]), str(top5),
                      str(row.get("mean_class_top1", "")), *by_group,
                      str(row.get("restricted_to_classes", "all")))  # fmt: skip
    console.print(table, markup=False)

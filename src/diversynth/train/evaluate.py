"""The `evaluate` stage: top-1 / top-5 on the real test set and on out-of-domain folders.

Sets with fewer classes than the model (ImageNet-R and -A: 200 of ImageNet's 1000) are
scored with the logits restricted to their classes, as their papers do. Images are
prepared the way the checkpoint records (size, normalisation, interpolation and centre
crop), whether diversynth trained it or its weights were imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from diversynth.artifacts.records import ClassIdentity, read_classes
from diversynth.config import FrequencyGroups, RunConfig
from diversynth.data_scan import readable_folder, readable_listing
from diversynth.errors import UsageError
from diversynth.preflight import timm_name_problem
from diversynth.progress import console, progress_bar
from diversynth.real_subset import real_subset
from diversynth.real_subset import train_counts as real_subset_counts
from diversynth.realdata import CatalogImageFolder, listed_dataset, real_listing
from diversynth.rundir import RunDir, write_json
from diversynth.safe_weights import loading
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
    hitsk = 0
    class_hits = torch.zeros(num_classes, dtype=torch.int64)
    class_images = torch.zeros(num_classes, dtype=torch.int64)
    with progress_bar() as bar:
        task = bar.add_task(label, total=len(loader.dataset), unit="images")
        for x, y in loader:
            logits = model(x.to(device)).float().cpu()
            if mask is not None:
                logits = logits + mask
            top = logits.topk(k, dim=1).indices
            class_hits += torch.bincount(y[top[:, 0] == y], minlength=num_classes)
            class_images += torch.bincount(y, minlength=num_classes)
            hitsk += (top == y[:, None]).any(dim=1).sum().item()
            bar.advance(task, len(y))
    total = int(class_images.sum())
    return {
        "images": total,
        "top1": round(100 * int(class_hits.sum()) / total, 3),
        f"top{k}": round(100 * hitsk / total, 3),
        **per_class_metrics(class_hits.tolist(), class_images.tolist()),
    }


def per_class_metrics(hits: list[int], images: list[int]) -> dict[str, Any]:
    """Each class's top-1 (None where the set has none of its images) and their mean."""
    top1 = [round(100 * h / n, 3) if n else None for h, n in zip(hits, images, strict=True)]
    present = [t for t in top1 if t is not None]
    return {"mean_class_top1": round(sum(present) / len(present), 3), "class_top1": top1}


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


def folder_set(root: Path, classes: list[dict[str, Any]], transform: Callable,
               restrict: bool | None, field: str = "evaluate.sets[].root",
               ) -> tuple[Dataset, list[int] | None]:  # fmt: skip
    """An out-of-domain folder and the classes its logits are restricted to (if any);
    `field` names the setting in messages (`evaluate.sets[0].root ('sketch')`)."""
    dataset = CatalogImageFolder(root, classes, transform, require_all=False, field=field)
    present = sorted(set(dataset.class_to_idx.values()))
    if restrict is None:
        restrict = len(present) < len(classes)
    return dataset, present if restrict else None


@dataclass(frozen=True)
class EvaluationSet:
    """Images a model is evaluated on: the classes its logits are restricted to (None:
    all), and each image's id (its listing id, `test/ROW` for Fashion-MNIST, or its file
    under the folder)."""

    name: str
    dataset: Dataset
    allowed: list[int] | None
    ids: list[str]
    unreadable: int = 0  # images left out (data.skip_unreadable)


def evaluation_sets(config: RunConfig, run: RunDir | None, classes: list[dict[str, Any]],
                    transform: Callable) -> list[EvaluationSet]:  # fmt: skip
    """The config's real test split (when it has a data section; the run's test list when
    it has one) and its out-of-domain folders (evaluate.sets), images through `transform`."""
    sets = []
    if config.data is not None:
        listing = real_subset(config, run, "test", classes)
        if listing is None:
            listing = real_listing(config.data, "test", classes)
        listing, unreadable = readable_listing(config, run, "test", listing)
        test = listed_dataset(config.data, listing, transform, classes)
        sets.append(EvaluationSet(f"{config.data.format}/test", test, None, list(listing.ids),
                                  unreadable))  # fmt: skip
    for i, extra in enumerate(config.evaluate.sets):
        field = f"evaluate.sets[{i}].root ({extra.name!r})"
        folder, allowed = folder_set(extra.root, classes, transform, extra.restrict, field)
        unreadable = readable_folder(config, run, i, folder)
        ids = [Path(path).relative_to(extra.root).as_posix() for path, _ in folder.samples]
        sets.append(EvaluationSet(extra.name, folder, allowed, ids, unreadable))
    return sets


def evaluate_on_sets(config: RunConfig, model: torch.nn.Module, meta: dict[str, Any],
                     classes: list[dict[str, Any]],
                     run: RunDir | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Top-1 / top-5, mean per-class top-1, and top-1 by class frequency on the config's
    evaluation sets (`evaluation_sets`)."""
    device = pick_device(config.train.device, "train.device")
    model.to(device).eval()
    sets = evaluation_sets(config, run, classes, eval_transform(meta))
    train_counts = _train_counts(config, run, classes) if config.data is not None else None
    results = {}
    for evaluation in sets:
        name, allowed = evaluation.name, evaluation.allowed
        if not len(evaluation.dataset):  # type: ignore[arg-type]
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
                  classes: list[dict[str, Any]]) -> list[int] | None:  # fmt: skip
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
    results = evaluate_on_sets(config, model, meta, read_classes(run), run)  # type: ignore[arg-type]
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
    if pretrained:
        from diversynth.hub import offline_unless_answering

        offline_unless_answering([name])
    # timm's weights of some models are pickles; without a hub, none download
    with loading("--pretrained" if pretrained else "--model", name, EvaluateError):
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes)
    data = resolve_data_config({}, model=model)
    meta = {"model": name, "num_classes": num_classes, "image_size": data["input_size"][-1],
            "mean": list(data["mean"]), "std": list(data["std"]),
            "crop_pct": data["crop_pct"], "interpolation": data["interpolation"]}  # fmt: skip
    return model, meta


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

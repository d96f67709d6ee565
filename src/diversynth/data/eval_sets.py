"""The images a classifier is evaluated on: the real test split and out-of-domain folders,
prepared the way a checkpoint records (the train, leaks and evaluate stages read them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from diversynth.config import RunConfig
from diversynth.data.real import CatalogImageFolder, listed_dataset, real_listing
from diversynth.data.scan import readable_folder, readable_listing
from diversynth.data.subset import real_subset
from diversynth.run.rundir import RunDir

if TYPE_CHECKING:
    from diversynth.run.artifacts.records import ClassIdentity


def folder_set(root: Path, classes: Sequence[ClassIdentity], transform: Callable,
               restrict: bool | None, field: str = "evaluate.sets[].root",
               ) -> tuple[CatalogImageFolder, list[int] | None]:  # fmt: skip
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


def evaluation_sets(config: RunConfig, run: RunDir | None, classes: Sequence[ClassIdentity],
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


def eval_transform(prep: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """timm's evaluation transform (resize to size / crop_pct, centre crop) from a
    checkpoint's preprocessing record; one written before the record existed was trained
    on images squashed to a square and normalised with 0.5, and is evaluated that way."""
    size = prep["image_size"]
    if "mean" not in prep:
        return v2.Compose([
            v2.RGB(), v2.Resize((size, size), antialias=True), v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3),
        ])  # fmt: skip
    from timm.data import create_transform

    timm_steps = create_transform(
        input_size=size,
        interpolation=prep.get("interpolation", "bilinear"),
        mean=tuple(prep["mean"]),
        std=tuple(prep["std"]),
        crop_pct=prep.get("crop_pct", 1.0),
    )
    return v2.Compose([v2.RGB(), timm_steps])

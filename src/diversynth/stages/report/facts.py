"""Everything the report shows about one run, read from its run directory (never rerun).

The images are the manifest as Arrow columns, grouped by class with numpy: the report
shows counts, means and a few rows per class, so no row becomes a Python object unless a
page shows it (a dict per row took most of a 33 s build at 1M images).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

from diversynth.config import STRATEGIES
from diversynth.errors import DiversynthError
from diversynth.run.artifacts.manifest import SCHEMA, image_flags, read_manifest, value_counts
from diversynth.run.artifacts.records import ClassRecord, PromptRecord, read_classes, read_prompts
from diversynth.run.rundir import RunDir, RunFileError, StageState, read_jsonl

# the stages whose records the report needs, and those it shows when the run has them
NEEDS = ("classes", "prompts")
READS = ("generate", "leaks", "train", "evaluate")


@dataclass(frozen=True)
class ClassImages:
    """Where each class's images lie in the manifest: positions grouped by class, in key
    order within each class."""

    order: np.ndarray  # manifest positions, sorted by class (stable)
    start: dict[int, int]  # class index -> its first place in `order`
    count: dict[int, int]
    mean_clip: dict[int, float]  # of the images with a class score

    @classmethod
    def of(cls, images: pa.Table) -> ClassImages:
        labels = images.column("class_index").to_numpy()
        order = np.argsort(labels, kind="stable")
        present, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        clip = images.column("clip_class").to_numpy(zero_copy_only=False).astype(np.float64)
        scored = ~np.isnan(clip)
        size = int(labels.max()) + 1 if len(labels) else 0
        totals = np.bincount(labels[scored], weights=clip[scored], minlength=size)
        scores = np.bincount(labels[scored], minlength=size)
        return cls(
            order=order,
            start=dict(zip(present.tolist(), starts.tolist(), strict=True)),
            count=dict(zip(present.tolist(), counts.tolist(), strict=True)),
            mean_clip={int(c): float(totals[c] / scores[c]) for c in present if scores[c]},
        )


@dataclass
class RunFacts:
    run: RunDir
    name: str
    config: dict[str, Any]
    classes: list[ClassRecord]
    prompts: list[PromptRecord]
    images: pa.Table  # the manifest, in key order
    states: dict[str, StageState]
    eval: dict[str, Any] | None
    train_metrics: list[dict[str, Any]]
    prompts_by_class: dict[int, list[PromptRecord]] = field(default_factory=dict)

    def summary(self, stage: str) -> dict[str, Any]:
        state = self.states.get(stage)
        return state.summary if state else {}

    @cached_property  # read once per class page: built once, not once per page
    def prompt_text(self) -> dict[int, PromptRecord]:
        return {p["prompt_id"]: p for p in self.prompts}

    @cached_property
    def by_class(self) -> ClassImages:
        return ClassImages.of(self.images)

    def image_count(self, class_index: int | None = None) -> int:
        """Images of the run, or of one class."""
        if class_index is None:
            return self.images.num_rows
        return self.by_class.count.get(class_index, 0)

    def first_images(self, class_index: int, count: int) -> list[dict[str, Any]]:
        """The first `count` images of a class, in key order, as manifest rows."""
        start = self.by_class.start.get(class_index)
        if start is None or count <= 0:
            return []
        stop = start + min(count, self.by_class.count[class_index])
        return self.images.take(self.by_class.order[start:stop]).to_pylist()

    def rows_of(self, keys: list[str]) -> list[dict[str, Any]]:
        """The manifest rows of these keys (those the manifest has), in the order given."""
        import pyarrow.compute as pc

        if not keys:
            return []
        wanted = pa.array(keys, pa.string())
        table = self.images.filter(pc.is_in(self.images.column("key"), wanted))
        found = {row["key"]: row for row in table.to_pylist()}
        return [found[k] for k in keys if k in found]

    @cached_property
    def leaks(self) -> dict[str, Any] | None:
        """leaks.json of the leaks stage, when it ran."""
        if "leaks" not in self.states:
            return None
        try:
            return json.loads(self.run.leaks.read_text())
        except (OSError, ValueError):
            return None

    def counts_by_strategy(self) -> dict[str, dict[str, int]]:
        prompts = Counter(p["strategy"] for p in self.prompts)
        images = value_counts(self.images.column("strategy"))
        return {s: {"prompts": prompts[s], "images": images.get(s, 0)} for s in STRATEGIES}

    def synthetic_scale(self) -> float | None:
        """Synthetic images available to training, as a multiple of the real training set.

        The training summary's own figure when it records one; otherwise the generated
        images over the real images of one epoch (0 when training used no synthetic images).
        """
        train = self.summary("train")
        if "synthetic_scale" in train:
            return float(train["synthetic_scale"])
        epochs = (self.config.get("train") or {}).get("epochs") or 1
        real = train.get("real_images")
        if not real:
            return None
        if not train.get("synthetic_images"):
            return 0.0
        return self.image_count() / (real / epochs)

    def image_flags(self) -> dict[str, int]:
        """Images regenerated (attempt > 0) and images carrying a filter flag."""
        return image_flags(self.images)


def load_run(root: Path) -> RunFacts:
    run = RunDir(root)
    if not run.classes.is_file() or not run.config.is_file():
        raise DiversynthError(
            f"--run: {str(root)!r} is not a diversynth run directory (no classes.jsonl and "
            "config.yaml); run the pipeline into it first"
        )
    try:
        config = yaml.safe_load(run.config.read_text()) or {}
    except yaml.YAMLError as exc:
        raise RunFileError(f"{run.config}: not readable YAML ({exc})".replace("\n", " ")) from None
    # the stages the report reads, in the order they ran, and its own record
    names = (*NEEDS, *READS, "report")
    states = {name: s for name in names if (s := run.read_state(name))}
    facts = RunFacts(
        run=run,
        name=str(config.get("name") or root.name),
        config=config,
        classes=read_classes(run),
        prompts=read_prompts(run) if run.prompts.is_file() else [],
        images=read_manifest(run.manifest) if run.manifest.is_file() else SCHEMA.empty_table(),
        states=states,
        eval=_read_json(run.eval),
        train_metrics=read_jsonl(run.train_metrics) if run.train_metrics.is_file() else [],
    )
    prompts: dict[int, list[PromptRecord]] = defaultdict(list)
    for prompt in facts.prompts:
        prompts[prompt["class_index"]].append(prompt)
    facts.prompts_by_class = dict(prompts)
    return facts


def _read_json(path: Path) -> dict[str, Any] | None:
    import json

    return json.loads(path.read_text()) if path.is_file() else None

"""Everything the report shows about one run, read from its run directory (never rerun)."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from diversynth.artifacts.manifest import read_manifest
from diversynth.artifacts.records import read_classes, read_prompts
from diversynth.config import STRATEGIES
from diversynth.errors import DiversynthError
from diversynth.rundir import STAGE_NAMES, RunDir, RunFileError, StageState, read_jsonl


@dataclass
class RunFacts:
    run: RunDir
    name: str
    config: dict[str, Any]
    classes: list[dict[str, Any]]
    prompts: list[dict[str, Any]]
    images: list[dict[str, Any]]  # manifest rows, in key order
    states: dict[str, StageState]
    eval: dict[str, Any] | None
    train_metrics: list[dict[str, Any]]
    images_by_class: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    prompts_by_class: dict[int, list[dict[str, Any]]] = field(default_factory=dict)

    def summary(self, stage: str) -> dict[str, Any]:
        state = self.states.get(stage)
        return state.summary if state else {}

    @cached_property  # read once per class page: built once, not once per page
    def prompt_text(self) -> dict[int, dict[str, Any]]:
        return {p["prompt_id"]: p for p in self.prompts}

    def counts_by_strategy(self) -> dict[str, dict[str, int]]:
        prompts = Counter(p["strategy"] for p in self.prompts)
        images = Counter(row["strategy"] for row in self.images)
        return {s: {"prompts": prompts[s], "images": images[s]} for s in STRATEGIES}

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
        return len(self.images) / (real / epochs)

    def image_flags(self) -> dict[str, int]:
        """Images regenerated (attempt > 0) and images carrying a filter flag."""
        regenerated = sum(1 for row in self.images if (row.get("attempt") or 0) > 0)
        flagged = Counter(flag for row in self.images for flag in row.get("flags") or [])
        return {"regenerated": regenerated, **dict(flagged)}


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
    states = {name: s for name in STAGE_NAMES if (s := run.read_state(name))}
    facts = RunFacts(
        run=run,
        name=str(config.get("name") or root.name),
        config=config,
        classes=read_classes(run),
        prompts=read_prompts(run) if run.prompts.is_file() else [],
        images=read_manifest(run.manifest).to_pylist() if run.manifest.is_file() else [],
        states=states,
        eval=_read_json(run.eval),
        train_metrics=read_jsonl(run.train_metrics) if run.train_metrics.is_file() else [],
    )
    by_class: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in facts.images:
        by_class[row["class_index"]].append(row)
    prompts: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for prompt in facts.prompts:
        prompts[prompt["class_index"]].append(prompt)
    facts.images_by_class, facts.prompts_by_class = dict(by_class), dict(prompts)
    return facts


def _read_json(path: Path) -> dict[str, Any] | None:
    import json

    return json.loads(path.read_text()) if path.is_file() else None

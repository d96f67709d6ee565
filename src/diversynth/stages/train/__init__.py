"""The train stage: a timm classifier on real + synthetic images, with auxiliary norms for
the synthetic domain, resumable step by step and across torchrun processes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from diversynth.stages.declaration import Estimate, Stage, real_inputs

if TYPE_CHECKING:
    from diversynth.config import RunConfig
    from diversynth.run.rundir import RunDir


def _run(config: RunConfig, run: RunDir, fingerprint: str, forced: bool = False,
         allow_version_change: bool = False) -> dict[str, Any]:  # fmt: skip
    from diversynth.stages.train.loop import run_train

    return run_train(config, run, fingerprint, forced, allow_version_change)


def _estimate(config: RunConfig, estimate: Estimate) -> None:
    from diversynth.models.cost import CARDS, training_cost

    synthetic = config.generate is not None and config.train.uses_synthetic
    estimate.training = training_cost(config, estimate.classes, CARDS, synthetic)
    estimate.notes += estimate.training.notes


STAGE = Stage(
    "train",
    version=2,
    run=_run,
    sections=("train", "data", "seed"),
    requires=("data",),
    needs=("classes", "generate"),
    reads=lambda c: ("leaks",) if c.train.exclude_leaks else (),
    outputs=lambda r: [r.checkpoint, r.train_metrics, r.train_dir / "segments.jsonl"],
    inputs=real_inputs,
    resumable=True,
    options=("allow_version_change",),
    estimate=_estimate,
)

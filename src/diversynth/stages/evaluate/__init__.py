"""The evaluate stage: top-1 / top-5 of the trained classifier on the real test set and on
out-of-domain folders."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from diversynth.stages.declaration import Stage, real_inputs

if TYPE_CHECKING:
    from diversynth.config import RunConfig
    from diversynth.run.rundir import RunDir


def _run(config: RunConfig, run: RunDir) -> dict[str, Any]:
    from diversynth.stages.evaluate.stage import run_evaluate

    return run_evaluate(config, run)


STAGE = Stage(
    "evaluate",
    version=1,
    run=_run,
    sections=("evaluate", "data", "train"),
    requires=("data",),
    needs=("classes", "train"),
    outputs=lambda r: [r.eval],
    inputs=lambda c: [*real_inputs(c), *(extra.root for extra in c.evaluate.sets)],
)

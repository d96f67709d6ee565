"""The leaks stage: synthetic images too close (CLIP image embeddings) to an image the
classifier is evaluated on, listed so that training can leave them out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from diversynth.stages.declaration import Stage, real_inputs

if TYPE_CHECKING:
    from diversynth.config import RunConfig
    from diversynth.run.rundir import RunDir


def _run(config: RunConfig, run: RunDir) -> dict[str, Any]:
    from diversynth.stages.leaks.stage import run_leaks

    return run_leaks(config, run)


STAGE = Stage(
    "leaks",
    version=1,
    pooled=True,
    run=_run,
    sections=("leaks", "clip", "data"),
    requires=("data",),
    needs=("classes", "generate"),
    outputs=lambda r: [r.leaks],
    inputs=lambda c: [
        *real_inputs(c),
        *(s.root for s in c.evaluate.sets),
        "evaluate.sets: " + ",".join(s.name for s in c.evaluate.sets),
    ],  # fmt: skip
)

"""The prompts stage: the texts the generator is given (naive templates, contextualized and
stylized LLM prompts), with a seed per image."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from diversynth.stages.declaration import LLM_TRANSPORT, Estimate, Stage, real_inputs

if TYPE_CHECKING:
    from diversynth.config import RunConfig
    from diversynth.run.rundir import RunDir


def _sections(config: RunConfig) -> tuple[str, ...]:
    """A budget other than uniform counts each class's real images: the data matters."""
    if config.prompts.budget.kind == "uniform":
        return ("prompts", "llm", "seed")
    return ("prompts", "llm", "seed", "data")


def _tokenizers(config: RunConfig) -> list[str | Path | None]:
    """What measures the prompts' length: the tokenizer folders of the configured pipeline
    (its id, for a hub model) and the components left out, whose limits do not count."""
    if config.generate is None:
        return []
    model = Path(config.generate.model)
    refs: list[str | Path | None] = []
    refs += sorted(model.glob("tokenizer*")) if model.is_dir() else [config.generate.model]
    if config.generate.components:
        refs.append("left out: " + ",".join(sorted(config.generate.components)))
    return refs


def _inputs(config: RunConfig) -> list[str | Path | None]:
    budgeted = real_inputs(config) if config.prompts.budget.kind != "uniform" else []
    return [*budgeted, *_tokenizers(config)]


def _estimate(config: RunConfig, estimate: Estimate) -> None:
    from diversynth.stages.prompts.budget import estimate_prompts

    estimate_prompts(config, estimate)


def _run(config: RunConfig, run: RunDir) -> dict[str, Any]:
    from diversynth.stages.prompts.stage import run_prompts

    return run_prompts(config, run)


STAGE = Stage(
    "prompts",
    version=2,
    pooled=True,
    run=_run,
    sections=_sections,
    needs=("classes",),
    outputs=lambda r: [r.prompts],
    ignores=LLM_TRANSPORT,
    inputs=_inputs,
    estimate=_estimate,
)

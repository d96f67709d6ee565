"""The classes stage: each class name of the user's list, disambiguated (by an LLM, CLIP or
the list's own definitions) into the name the generator is prompted with."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from diversynth.stages.declaration import LLM_TRANSPORT, Stage, subset_lists

if TYPE_CHECKING:
    from diversynth.config import RunConfig
    from diversynth.run.rundir import RunDir


def _sections(config: RunConfig) -> tuple[str, ...]:
    """The clip model and real data matter to class names only in CLIP mode, the LLM only
    when it proposes names: other changes to them leave classes.jsonl as it is."""
    rule = config.classes.disambiguate
    sections: tuple[str, ...] = ("classes", "llm") if rule.llm else ("classes",)
    if config.disambiguation_mode == "clip":
        sections += ("clip", "data")
    return sections


def _run(config: RunConfig, run: RunDir) -> dict[str, Any]:
    from diversynth.stages.classes.stage import run_classes

    return run_classes(config, run)


STAGE = Stage(
    "classes",
    version=2,
    run=_run,
    sections=_sections,
    outputs=lambda r: [r.classes],
    ignores=LLM_TRANSPORT,
    inputs=lambda c: [
        c.classes.file,
        c.classes.folder,
        *(subset_lists(c) if c.disambiguation_mode == "clip" else []),
    ],
)

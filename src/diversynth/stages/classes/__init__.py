"""The classes stage: each class name of the user's list, disambiguated (by an LLM, CLIP or
the list's own definitions) into the name the generator is prompted with."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from diversynth.stages.declaration import LLM_TRANSPORT, Estimate, Stage, subset_lists

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


def _estimate(config: RunConfig, estimate: Estimate) -> None:
    """Every class of the list, and with LLM names a request a class (priced without the
    confusable names the stage adds: a little low)."""
    from diversynth.data.classes.catalog import load_classes
    from diversynth.stages.classes.llm_names import name_request

    entries = load_classes(config.classes)
    estimate.classes = len(entries)
    rule = config.classes.disambiguate
    if config.llm is not None and rule.llm and config.disambiguation_mode != "off" and entries:
        like = name_request(entries[0], [], rule.llm_names, 0, config.llm.max_tokens)
        estimate.ask_llm(config, len(entries), like)


def _run(config: RunConfig, run: RunDir) -> dict[str, Any]:
    from diversynth.stages.classes.stage import run_classes

    return run_classes(config, run)


STAGE = Stage(
    "classes",
    version=2,
    pooled=True,
    run=_run,
    sections=_sections,
    outputs=lambda r: [r.classes],
    ignores=LLM_TRANSPORT,
    inputs=lambda c: [
        c.classes.file,
        c.classes.folder,
        *(subset_lists(c) if c.disambiguation_mode == "clip" else []),
    ],
    estimate=_estimate,
)

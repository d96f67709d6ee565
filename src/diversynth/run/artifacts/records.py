"""The records of the run directory's JSONL artifacts, defined once: what the classes
stage writes to classes.jsonl and the prompts stage to prompts.jsonl, as later stages,
the report and the command line read them."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict, cast

from diversynth.run.rundir import RunDir, read_jsonl


class ClassIdentity(TypedDict):
    """What names a class in a list (real data folders and evaluation match on it)."""

    index: int
    wnid: str | None
    raw_name: str


class ClassRecord(ClassIdentity):
    """A line of classes.jsonl."""

    name: str  # the name every prompt uses
    description: str | None
    lemmas: list[str]
    hypernyms: list[str]
    candidates: list[dict[str, Any]]  # every candidate name, its source, score and notes
    reason: str  # why the winner won


class PromptRecord(TypedDict):
    """A line of prompts.jsonl: one prompt and the seeds of its images."""

    prompt_id: int
    class_index: int
    strategy: str  # one of config.STRATEGIES
    text: str
    seed: int  # the first image's
    image_seeds: list[int]  # one per image (images_per_prompt, more where texts repeated)
    template: NotRequired[bool]  # naive prompts
    filled_for: NotRequired[str]  # a template prompt standing in for missing LLM prompts
    contexts: NotRequired[list[str]]  # CD prompts
    style: NotRequired[str]  # SD prompts
    example: NotRequired[str]  # CD/SD: the worked example the LLM was shown for its answer


# read_jsonl parses JSON into plain dicts; the casts below are where those dicts are taken
# as the records the classes and prompts stages wrote (nothing is checked at run time: a
# stage that reads a field a file lacks fails there, as it did before these types).


def read_classes(run: RunDir) -> list[ClassRecord]:
    return cast("list[ClassRecord]", read_jsonl(run.classes))


def read_prompts(run: RunDir) -> list[PromptRecord]:
    return cast("list[PromptRecord]", read_jsonl(run.prompts))

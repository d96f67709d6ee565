"""What a stage declares about itself: its name and version, the config sections and outside
inputs its outputs depend on, the earlier stages it reads, the files it writes, and its
hooks. Each stage folder exports one `Stage` as `STAGE`; the pipeline keeps their order.

Hooks are plain functions of the stage's folder that import its heavy modules (torch,
diffusers, timm) when called, so that listing the stages costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diversynth.run import integrity
from diversynth.run.integrity import Damage
from diversynth.run.rundir import RunDir, StageState, digest_json, sha256_file

if TYPE_CHECKING:
    from diversynth.config import RunConfig, Strategy
    from diversynth.llm.base import ChatRequest
    from diversynth.models.cost import TrainingCost

# A run hook takes (config, run, **options) and returns the summary the state records; a
# resumable one also takes the fingerprint (to tag partial work) and `forced`.
RunHook = Callable[..., dict[str, Any]]
Sections = tuple[str, ...] | Callable[["RunConfig"], tuple[str, ...]]
Inputs = Callable[["RunConfig"], list["str | Path | None"]]

# how requests reach the LLM, not what it is asked or answers: changing them keeps the
# classes and prompts (answers are cached by request)
LLM_TRANSPORT = ("llm.max_in_flight", "llm.timeout", "llm.deadline", "llm.max_retries")
CHARS_PER_TOKEN = 4  # English text in an LLM's tokenizer, roughly


def subset_lists(config: RunConfig) -> list[str | Path | None]:
    """data.subset's list files (none, or None where not given)."""
    subset = config.data.subset if config.data else None
    return [subset.list, subset.test_list] if subset else []


def real_inputs(config: RunConfig) -> list[str | Path | None]:
    """The real data folder and any subset list files."""
    return [config.data.root, *subset_lists(config)] if config.data else []


@dataclass
class Estimate:
    """What a run will amount to, before it runs (`diversynth plan`): each stage's
    `estimate` hook fills in its part, in the pipeline's order, from the config and the
    parts of the stages before it."""

    classes: int = 0
    prompts: int = 0
    images: int = 0
    images_per_prompt: list[int] = field(default_factory=list)  # empty: budgeted per class
    images_by_strategy: dict[Strategy, int] = field(default_factory=dict)
    shards: int = 0
    bytes_per_image: float = 0.0
    disk_bytes: float = 0.0
    llm_requests: int = 0
    llm_tokens_in: int = 0
    llm_tokens_out: int = 0
    training: TrainingCost | None = None
    notes: list[str] = field(default_factory=list)

    def ask_llm(self, config: RunConfig, requests: int, like: ChatRequest) -> None:
        """Count `requests` to the LLM as long as `like`, each answered with at most
        llm.max_tokens."""
        chars = sum(len(text) for _, text in like.messages)
        self.llm_requests += requests
        self.llm_tokens_in += requests * math.ceil(chars / CHARS_PER_TOKEN)
        self.llm_tokens_out += requests * (config.llm.max_tokens if config.llm else 0)


def _no_files(run: RunDir) -> list[Path]:
    return []


def _no_inputs(config: RunConfig) -> list[str | Path | None]:
    return []


@dataclass(frozen=True)
class Stage:
    name: str
    version: int  # bump it when the stage's code changes what it writes
    run: RunHook
    sections: Sections  # config sections it depends on (or a function of the config)
    requires: tuple[str, ...] = ()  # optional config sections it cannot run without
    needs: tuple[str, ...] = ()  # earlier stages whose outputs it reads
    # earlier stages whose outputs it uses when they exist (or a function of the config
    # that names them)
    reads: Sections = ()
    outputs: Callable[[RunDir], list[Path]] = field(default=_no_files)
    inputs: Inputs = field(default=_no_inputs)
    # (config, run) -> bool: whether its outputs are whole (default: each output exists)
    complete: Callable[[RunConfig, RunDir], bool] | None = None
    # (config, run) -> str: what later stages see of its outputs (default: output bytes)
    digest: Callable[[RunConfig, RunDir], str] | None = None
    # run() also takes the fingerprint (to tag partial work) and whether the run is forced
    # (to discard partial work); other stages start from scratch every time anyway
    resumable: bool = False
    options: tuple[str, ...] = ()  # run options (not config: no fingerprint) it takes
    # "section.field" settings that change how the work runs but not its output
    ignores: tuple[str, ...] = ()
    # the files whose size, time and hash the state records (default: outputs)
    recorded: Callable[[RunDir], list[Path]] | None = None
    # (run, relative path) -> sha256 recorded elsewhere (shard stats)
    expected_sha: integrity.ExpectedSha | None = None
    # (run, relative paths): remove damaged outputs so that the stage makes them again
    # (default: delete the files)
    discard: Callable[[RunDir, list[str]], None] | None = None
    # config sections left out of a digest of the stage's own settings (its fingerprint
    # less upstream outputs), handed to run() as `settings`; None: not handed
    settings_without: tuple[str, ...] | None = None
    # (config, estimate): add what the stage will make and ask for (`diversynth plan`)
    estimate: Callable[[RunConfig, Estimate], None] | None = None
    # a sweep makes it once, in a pool run whose trials read its outputs and record
    pooled: bool = False

    def execute(self, config: RunConfig, run: RunDir, fingerprint: str, forced: bool,
                options: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        mine = {k: v for k, v in options.items() if k in self.options and v is not None}
        if self.settings_without is not None:
            mine["settings"] = options["settings"]
        if self.resumable:
            return self.run(config, run, fingerprint, forced=forced, **mine)
        return self.run(config, run, **mine)

    def sections_in(self, config: RunConfig) -> tuple[str, ...]:
        return self.sections(config) if callable(self.sections) else self.sections

    def missing_sections(self, config: RunConfig) -> list[str]:
        """The `requires` sections the config leaves out: the stage cannot run without them."""
        return [section for section in self.requires if getattr(config, section) is None]

    def reads_in(self, config: RunConfig) -> tuple[str, ...]:
        return self.reads(config) if callable(self.reads) else self.reads

    def is_complete(self, config: RunConfig, run: RunDir) -> bool:
        if self.complete is not None:
            return self.complete(config, run)
        return all(path.exists() for path in self.outputs(run))

    def recorded_files(self, run: RunDir) -> list[Path]:
        return self.recorded(run) if self.recorded is not None else self.outputs(run)

    def damaged(self, run: RunDir, state: StageState | None, main: bool) -> list[Damage]:
        """Outputs changed since the stage wrote them (size and time, then hash); a file
        whose time alone changed gets its new time recorded."""
        if state is None or not state.files:
            return []
        damaged, touched = integrity.quick_check(run, state, self.expected_sha)
        if touched and not damaged and main:
            run.write_state(integrity.refresh_times(run, state))
        return damaged

    def verify(self, run: RunDir, state: StageState) -> list[Damage]:
        """Every output the state records, hashed and parsed (`diversynth verify`)."""
        return integrity.full_check(run, state, self.expected_sha)

    def discard_damaged(self, run: RunDir, damaged: list[Damage]) -> None:
        if self.discard is not None:
            self.discard(run, [d.path for d in damaged])
            return
        for damage in damaged:
            (run.root / damage.path).unlink(missing_ok=True)

    def output_digest(self, config: RunConfig, run: RunDir, files: dict[str, list[Any]]) -> str:
        """What later stages see of this one's outputs: by default each output's sha256,
        taken from `files` (the state's record of them: each file is hashed once)."""
        if self.digest is not None:
            return self.digest(config, run)
        shas = {}
        for path in self.outputs(run):
            rel = str(path.relative_to(run.root))
            if rel in files:
                shas[rel] = files[rel][2]
            elif path.is_file():
                shas[rel] = sha256_file(path)
        return digest_json(shas)

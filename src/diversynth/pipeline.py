"""The order of the stages and the conductor's rules: fingerprints and the skip / rerun
decision.

A stage's fingerprint hashes its config section, the output digests of the stages it reads,
and the identity of outside inputs (model folders, datasets). `run` skips a stage whose
recorded fingerprint matches and whose outputs are all there; otherwise it runs it, and the
stages after it see a new input digest only if its outputs really changed. Each stage
declares itself in its folder (`diversynth.stages.<name>.STAGE`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from rich.markup import escape

from diversynth.commands.preflight import preflight
from diversynth.config import (
    ConfigError,
    RunConfig,
    dump_config,
    fingerprinted,
    prompt_count_problem,
)
from diversynth.errors import DiversynthError, PartialStage, UsageError, shown
from diversynth.run import integrity, provenance
from diversynth.run.progress import console
from diversynth.run.rundir import (
    RunDir,
    StageState,
    Timer,
    digest_json,
    path_signature,
    write_text,
)
from diversynth.stages import classes, evaluate, generate, leaks, prompts, report, train
from diversynth.stages.declaration import Estimate, Stage


class PipelineError(DiversynthError):
    pass


class TrialStagesError(PipelineError, UsageError):
    """Stages asked of a sweep's trial that run in its pool."""


class StageListError(PipelineError, UsageError):
    """A `--stages` or `--force` value that names no stage, or one that does not exist."""


def _external(ref: str | Path) -> Any:
    """Identity of an outside input: a folder or file signature, or the reference itself."""
    text = str(ref).removeprefix("local-dir:")
    path = Path(text)
    return path_signature(path) if path.exists() else text


# the order the stages run in
STAGES: list[Stage] = [classes.STAGE, prompts.STAGE, generate.STAGE, leaks.STAGE, train.STAGE,
                      evaluate.STAGE, report.STAGE]  # fmt: skip
STAGE_NAMES = [stage.name for stage in STAGES]
# a sweep's pool run makes these once; each trial runs the rest on the pool's outputs
POOL_STAGES = tuple(stage.name for stage in STAGES if stage.pooled)
TRIAL_STAGES = tuple(stage.name for stage in STAGES if not stage.pooled)


def estimate(config: RunConfig, through: str | None = None) -> Estimate:
    """What the run will make and ask for, each stage adding its part in order, up to and
    including `through` (every stage: None)."""
    if through is not None and through not in STAGE_NAMES:
        raise ValueError(f"estimate: no stage {through!r}")
    found = Estimate()
    for stage in STAGES:
        if stage.estimate is not None:
            stage.estimate(config, found)
        if stage.name == through:
            break
    return found


def parse_stage_list(text: str | None, option: str = "--stages") -> list[str]:
    """The stages a comma-separated list names, in pipeline order (all for None)."""
    if text is None:
        return list(STAGE_NAMES)
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:  # "" or ",": a list that names nothing is not "all of them"
        raise StageListError(f"{option}: no stage named (got {shown(text)}); choose from "
                            f"{', '.join(STAGE_NAMES)}")  # fmt: skip
    unknown = [shown(n, 40) for n in names if n not in STAGE_NAMES]
    if unknown:
        raise StageListError(f"{option}: unknown stage(s) {', '.join(unknown)}; choose from "
                            f"{', '.join(STAGE_NAMES)}")  # fmt: skip
    return [n for n in STAGE_NAMES if n in names]


def fingerprint(stage: Stage, config: RunConfig, run: RunDir, upstream: bool = True,
                leave_out: tuple[str, ...] = ()) -> str:  # fmt: skip
    """What a stage's outputs depend on: its config sections (less `leave_out`), outside
    inputs and (with `upstream`) the outputs of the stages it reads."""
    data = fingerprinted(config)
    outputs: dict[str, str | None] = {}
    for name in stage.needs if upstream else ():
        state = run.read_state(name)
        if state is None:
            raise PipelineError(
                f"stage {stage.name!r} needs {name!r}, which has not run in {run.root}; "
                f"add it to --stages"
            )
        outputs[name] = state.output_digest
    for name in stage.reads_in(config) if upstream else ():
        state = run.read_state(name)
        outputs[name] = state.output_digest if state else None
    sections = tuple(s for s in stage.sections_in(config) if s not in leave_out)
    for dotted in stage.ignores:
        section, _, key = dotted.partition(".")
        if isinstance(data.get(section), dict):
            data[section].pop(key, None)
    return digest_json(
        {
            "stage": stage.name,
            "version": stage.version,
            "config": {s: data.get(s) for s in sections},
            "upstream": outputs,
            "inputs": [_external(ref) for ref in stage.inputs(config) if ref is not None],
        }
    )


def settings_fingerprint(name: str, config: RunConfig, run: RunDir,
                         leave_out: tuple[str, ...] = ()) -> str:  # fmt: skip
    """A stage's fingerprint less the outputs of earlier stages: how it works on whatever
    inputs it is given (generate keys each shard by it and that shard's own prompts)."""
    stage = STAGES[STAGE_NAMES.index(name)]
    return fingerprint(stage, config, run, upstream=False, leave_out=leave_out)


def run_stages(
    config: RunConfig,
    run: RunDir,
    stages: list[str] | None = None,
    force: list[str] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Run the selected stages in order; return {stage: 'ran' | 'skipped' | 'partial'}.

    `options` go to the stages that take them (generate: `max_shards`; generate and train:
    `allow_version_change`); `break_lock` goes to the run's lock (RunDir.lock)."""
    selected = stages or list(STAGE_NAMES)
    missing = [
        f"{section}: required by the {stage.name} stage (or leave {stage.name} out of --stages)"
        for stage in STAGES
        if stage.name in selected
        for section in stage.missing_sections(config)
    ]
    if missing:
        raise PipelineError("\n".join(missing))
    pooled = [name for name in selected if run.home(name) is not run]
    if pooled:
        raise TrialStagesError(
            f"{run.root} trains on the images of {run.pool.root if run.pool else ''}: its "
            f"{', '.join(pooled)} stage(s) run there (`diversynth sweep` makes them)"
        )
    from diversynth.models.hub import hub_models, offline_unless_answering

    offline_unless_answering(hub_models(config))  # before preflight reads any model's files
    if "prompts" in selected:  # before it builds a record of every prompt
        from diversynth.data.classes.catalog import load_classes

        problem = prompt_count_problem(config, len(load_classes(config.classes)))
        if problem:
            raise ConfigError(problem)
    preflight(config, selected)
    forced_from = min((STAGE_NAMES.index(f) for f in force or []), default=len(STAGE_NAMES))
    options = options or {}
    if not _main_process():  # another torchrun process: it computes, the first one writes
        return _run_locked(config, run, selected, forced_from, options, main=False)
    run.claim()
    with run.lock(break_lock=bool(options.get("break_lock"))):
        return _run_locked(config, run, selected, forced_from, options)


def _check_upstream(stage: Stage, config: RunConfig, run: RunDir, selected: list[str],
                    main: bool) -> None:  # fmt: skip
    """The outputs of earlier stages this one reads, when those stages are not run now,
    must be as they were written."""
    for name in (*stage.needs, *stage.reads_in(config)):
        if name in selected:
            continue  # checked, and remade if damaged, when its turn came
        upstream = STAGES[STAGE_NAMES.index(name)]
        home = run.home(name)  # a trial's pool stages lie in its pool
        damaged = upstream.damaged(home, home.read_state(name), main)
        if damaged:
            raise PipelineError(
                f"{name}: {damaged[0]} changed since the {name} stage wrote it; "
                f"`diversynth run {home.config} --out {home.root} --stages {name},{stage.name}` "
                "makes it again"
            )


def brief(summary: dict[str, Any], limit: int = 200) -> str:
    """A summary as the console shows it: its first plain values (numbers, flags, short
    names) up to about `limit` characters; lists, tables and long text stay in the state
    file, which the line names."""
    shown_items: list[str] = []
    for key, value in summary.items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, int):
            text = f"{value:,}"
        elif isinstance(value, float):
            text = f"{value:.4g}"
        elif isinstance(value, str) and len(value) <= 40 and "\n" not in value:
            text = value
        else:
            continue
        item = f"{key} {text}"
        if sum(len(i) + 2 for i in shown_items) + len(item) > limit:
            break
        shown_items.append(item)
    return ", ".join(shown_items)


def _main_process() -> bool:
    """False in every torchrun process but the first (read from the environment, so that
    commands that never train do not import torch to ask)."""
    return os.environ.get("RANK", "0") == "0"


def _run_locked(config: RunConfig, run: RunDir, selected: list[str], forced_from: int,
                options: dict[str, Any], main: bool = True) -> dict[str, str]:  # fmt: skip
    resolved = dump_config(config)
    if main and (not run.config.is_file() or run.config.read_text() != resolved):
        write_text(run.config, resolved)
    say = console.print if main else (lambda *args, **kwargs: None)
    outcome = {}
    for stage in STAGES:
        if stage.name not in selected:
            continue
        _check_upstream(stage, config, run, selected, main)
        fp = fingerprint(stage, config, run)
        state = run.read_state(stage.name)
        forced = STAGE_NAMES.index(stage.name) >= forced_from
        damaged = stage.damaged(run, state, main)
        up_to_date = state and state.fingerprint == fp and stage.is_complete(config, run)
        if not forced and up_to_date and not damaged:
            say(f"[green]{stage.name}[/green]: skipped: up to date")
            outcome[stage.name] = "skipped"
            continue
        for damage in damaged:
            say(f"[yellow]{stage.name}[/yellow]: {escape(str(damage))} changed since the stage "
                "wrote it: making it again")  # fmt: skip
        say(f"[bold cyan]{stage.name}[/bold cyan]: running")
        if main:
            if damaged:
                stage.discard_damaged(run, damaged)
            run.clear_state(stage.name)
        timer = Timer()
        try:
            if stage.settings_without is not None:
                options = {**options, "settings": settings_fingerprint(
                    stage.name, config, run, stage.settings_without)}  # fmt: skip
            summary = stage.execute(config, run, fp, forced, options)
        except PartialStage as stop:
            say(f"[yellow]{stage.name}[/yellow]: stopped early: {escape(str(stop))}")
            outcome[stage.name] = "partial"
            break
        if main:
            files = integrity.record_files(run, stage.recorded_files(run))
            run.write_state(
                StageState(
                    stage=stage.name,
                    fingerprint=fp,
                    output_digest=stage.output_digest(config, run, files),
                    finished_at=time.time(),
                    seconds=round(timer.seconds, 3),
                    summary=summary,
                    made_with=provenance.summary(),
                    files=files,
                )
            )
        short = brief(summary)
        say(
            f"[bold cyan]{stage.name}[/bold cyan]: done in {timer.seconds:.1f}s"
            f"{': ' + escape(short) if short else ''} (all: .state/{stage.name}.json)",
            soft_wrap=True,
        )
        outcome[stage.name] = "ran"
    return outcome

"""Stages in order, fingerprints, and the skip / rerun decision.

A stage's fingerprint hashes its config section, the output digests of the stages it reads,
and the identity of outside inputs (model folders, datasets). `run` skips a stage whose
recorded fingerprint matches and whose outputs are all there; otherwise it runs it, and the
stages after it see a new input digest only if its outputs really changed.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape

from diversynth import environment, integrity, rundir
from diversynth.config import (
    ConfigError,
    RunConfig,
    dump_config,
    fingerprinted,
    prompt_count_problem,
)
from diversynth.errors import DiversynthError, PartialStage, UsageError, shown
from diversynth.integrity import Damage
from diversynth.preflight import preflight
from diversynth.progress import console
from diversynth.rundir import (
    RunDir,
    StageState,
    Timer,
    digest_json,
    path_signature,
    sha256_file,
    write_text,
)


class PipelineError(DiversynthError):
    pass


class TrialStagesError(PipelineError, UsageError):
    """Stages asked of a sweep's trial that run in its pool."""


class StageListError(PipelineError, UsageError):
    """A `--stages` or `--force` value that names no stage, or one that does not exist."""


def _resolve(ref: str) -> Callable[..., Any]:
    """'module:function', imported on first use: stage modules pull in torch, diffusers, timm."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Stage:
    name: str
    version: int  # bump it when the stage's code changes what it writes
    run: str  # 'module:function' taking (config, run_dir) and returning a summary dict
    # config sections it depends on (or a function of the config that names them)
    sections: tuple[str, ...] | Callable[[RunConfig], tuple[str, ...]]
    requires: tuple[str, ...] = ()  # optional config sections it cannot run without
    needs: tuple[str, ...] = ()  # earlier stages whose outputs it reads
    # earlier stages whose outputs it uses when they exist (or a function of the config
    # that names them)
    reads: tuple[str, ...] | Callable[[RunConfig], tuple[str, ...]] = ()
    outputs: Callable[[RunDir], list[Path]] = field(default=lambda run: [])
    inputs: Callable[[RunConfig], list[str | Path | None]] = field(default=lambda config: [])
    complete: str | None = None  # 'module:function' (config, run_dir) -> bool; default: outputs
    digest: str | None = None  # 'module:function' (config, run_dir) -> str; default: output bytes
    # run() also takes the fingerprint (to tag partial work) and whether the run is forced
    # (to discard partial work); other stages start from scratch every time anyway
    resumable: bool = False
    options: tuple[str, ...] = ()  # run options (not config: no fingerprint) it takes
    # "section.field" settings that change how the work runs but not its output
    ignores: tuple[str, ...] = ()
    # the files whose size, time and hash the state records (default: outputs)
    recorded: Callable[[RunDir], list[Path]] | None = None
    # 'module:function' (run, relative path) -> sha256 recorded elsewhere (shard stats)
    expected_sha: str | None = None
    # 'module:function' (run, relative paths): remove damaged outputs so that the stage
    # makes them again (default: delete the files)
    discard: str | None = None
    # config sections left out of a digest of the stage's own settings (its fingerprint
    # less upstream outputs), handed to run() as `settings`; None: not handed
    settings_without: tuple[str, ...] | None = None

    def execute(self, config: RunConfig, run: RunDir, fingerprint: str, forced: bool,
                options: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        mine = {k: v for k, v in options.items() if k in self.options and v is not None}
        if self.settings_without is not None:
            mine["settings"] = settings_fingerprint(self.name, config, run, self.settings_without)
        if self.resumable:
            return _resolve(self.run)(config, run, fingerprint, forced=forced, **mine)
        return _resolve(self.run)(config, run, **mine)

    def reads_in(self, config: RunConfig) -> tuple[str, ...]:
        return self.reads(config) if callable(self.reads) else self.reads

    def is_complete(self, config: RunConfig, run: RunDir) -> bool:
        if self.complete is not None:
            return _resolve(self.complete)(config, run)
        return all(path.exists() for path in self.outputs(run))

    def recorded_files(self, run: RunDir) -> list[Path]:
        return self.recorded(run) if self.recorded is not None else self.outputs(run)

    def _expected_sha(self) -> integrity.ExpectedSha | None:
        return _resolve(self.expected_sha) if self.expected_sha else None

    def damaged(self, run: RunDir, state: StageState | None, main: bool) -> list[Damage]:
        """Outputs changed since the stage wrote them (size and time, then hash); a file
        whose time alone changed gets its new time recorded."""
        if state is None or not state.files:
            return []
        damaged, touched = integrity.quick_check(run, state, self._expected_sha())
        if touched and not damaged and main:
            run.write_state(integrity.refresh_times(run, state))
        return damaged

    def verify(self, run: RunDir, state: StageState) -> list[Damage]:
        """Every output the state records, hashed and parsed (`diversynth verify`)."""
        return integrity.full_check(run, state, self._expected_sha())

    def discard_damaged(self, run: RunDir, damaged: list[Damage]) -> None:
        if self.discard is not None:
            _resolve(self.discard)(run, [d.path for d in damaged])
            return
        for damage in damaged:
            (run.root / damage.path).unlink(missing_ok=True)

    def output_digest(self, config: RunConfig, run: RunDir, files: dict[str, list[Any]]) -> str:
        """What later stages see of this one's outputs: by default each output's sha256,
        taken from `files` (the state's record of them: each file is hashed once)."""
        if self.digest is not None:
            return _resolve(self.digest)(config, run)
        shas = {}
        for path in self.outputs(run):
            rel = str(path.relative_to(run.root))
            if rel in files:
                shas[rel] = files[rel][2]
            elif path.is_file():
                shas[rel] = sha256_file(path)
        return digest_json(shas)


def _external(ref: str | Path) -> Any:
    """Identity of an outside input: a folder or file signature, or the reference itself."""
    text = str(ref).removeprefix("local-dir:")
    path = Path(text)
    return path_signature(path) if path.exists() else text


def _classes_sections(config: RunConfig) -> tuple[str, ...]:
    """The clip model and real data matter to class names only in CLIP mode, the LLM only
    when it proposes names: other changes to them leave classes.jsonl as it is."""
    rule = config.classes.disambiguate
    sections = ("classes", "llm") if rule.llm else ("classes",)
    if config.disambiguation_mode == "clip":
        sections += ("clip", "data")
    return sections


def _prompts_sections(config: RunConfig) -> tuple[str, ...]:
    """A budget other than uniform counts each class's real images: the data matters."""
    if config.prompts.budget.kind == "uniform":
        return ("prompts", "llm", "seed")
    return ("prompts", "llm", "seed", "data")


def _prompt_tokenizers(config: RunConfig) -> list[str | Path | None]:
    """What measures the prompts' length: the tokenizer folders of the configured pipeline
    (its id, for a hub model) and the components left out, whose limits do not count."""
    if config.generate is None:
        return []
    model = Path(config.generate.model)
    refs: list[str | Path | None] = (sorted(model.glob("tokenizer*")) if model.is_dir()
                                     else [config.generate.model])  # fmt: skip
    if config.generate.components:
        refs.append("left out: " + ",".join(sorted(config.generate.components)))
    return refs


def _prompts_inputs(config: RunConfig) -> list[str | Path | None]:
    budgeted = _real_inputs(config) if config.prompts.budget.kind != "uniform" else []
    return [*budgeted, *_prompt_tokenizers(config)]


def _subset_lists(config: RunConfig) -> list[str | Path | None]:
    """data.subset's list files (none, or None where not given)."""
    subset = config.data.subset if config.data else None
    return [subset.list, subset.test_list] if subset else []


def _real_inputs(config: RunConfig) -> list[str | Path | None]:
    """The real data folder and any subset list files."""
    return [config.data.root, *_subset_lists(config)] if config.data else []


# how requests reach the LLM, not what it is asked or answers: changing them keeps the
# classes and prompts (answers are cached by request)
LLM_TRANSPORT = ("llm.max_in_flight", "llm.timeout", "llm.deadline", "llm.max_retries")

STAGES = [
    Stage(
        "classes",
        version=2,
        run="diversynth.classes.stage:run_classes",
        sections=_classes_sections,
        outputs=lambda r: [r.classes],
        ignores=LLM_TRANSPORT,
        inputs=lambda c: [
            c.classes.file,
            c.classes.folder,
            *(_subset_lists(c) if c.disambiguation_mode == "clip" else []),
        ],
    ),
    Stage(
        "prompts",
        version=2,
        run="diversynth.prompts.stage:run_prompts",
        sections=_prompts_sections,
        needs=("classes",),
        outputs=lambda r: [r.prompts],
        ignores=LLM_TRANSPORT,
        inputs=_prompts_inputs,
    ),
    Stage(
        "generate",
        version=1,
        run="diversynth.generate.stage:run_generate",
        sections=("generate", "clip", "prompts"),
        requires=("generate",),
        needs=("classes", "prompts"),
        outputs=lambda r: [r.manifest],
        inputs=lambda c: [c.generate.model, c.clip.model if c.clip else None],
        complete="diversynth.generate.stage:generate_is_complete",
        digest="diversynth.generate.stage:generate_output_digest",
        recorded=lambda r: [
            r.manifest,
            *sorted(r.shards.glob("*.tar")),
            *sorted(r.shards.glob("*.rows.parquet")),
            *sorted(r.shards.glob("*.json")),
        ],  # fmt: skip
        expected_sha="diversynth.generate.stage:recorded_tar_sha",
        # each shard's prompt records carry what the prompts settings do to it: without
        # them, a shard whose prompts a prompts change left alone is kept
        settings_without=("prompts",),
        discard="diversynth.generate.stage:discard_damaged",
        resumable=True,
        options=("max_shards", "allow_version_change"),
        # either engine, any number of workers: the same shards, so switching keeps them
        ignores=("generate.engine", "generate.ray"),
    ),
    Stage(
        "leaks",
        version=1,
        run="diversynth.leaks:run_leaks",
        sections=("leaks", "clip", "data"),
        requires=("data",),
        needs=("classes", "generate"),
        outputs=lambda r: [r.leaks],
        inputs=lambda c: [
            *_real_inputs(c),
            *(s.root for s in c.evaluate.sets),
            "evaluate.sets: " + ",".join(s.name for s in c.evaluate.sets),
        ],  # fmt: skip
    ),
    Stage(
        "train",
        version=2,
        run="diversynth.train.loop:run_train",
        sections=("train", "data", "seed"),
        requires=("data",),
        needs=("classes", "generate"),
        reads=lambda c: ("leaks",) if c.train.exclude_leaks else (),
        outputs=lambda r: [r.checkpoint, r.train_metrics, r.train_dir / "segments.jsonl"],
        inputs=_real_inputs,
        resumable=True,
        options=("allow_version_change",),
    ),
    Stage(
        "evaluate",
        version=1,
        run="diversynth.train.evaluate:run_evaluate",
        sections=("evaluate", "data", "train"),
        requires=("data",),
        needs=("classes", "train"),
        outputs=lambda r: [r.eval],
        inputs=lambda c: [*_real_inputs(c), *(extra.root for extra in c.evaluate.sets)],
    ),
    Stage(
        "report",
        version=2,
        run="diversynth.report.stage:run_report",
        sections=("report", "name"),
        needs=("classes", "prompts"),
        # `diversynth report` rewrites the site outside the pipeline: not damage
        recorded=lambda r: [],
        reads=("generate", "leaks", "train", "evaluate"),
        outputs=lambda r: [r.report_dir / "index.html"],
    ),
]
STAGE_NAMES = [stage.name for stage in STAGES]
assert STAGE_NAMES == list(rundir.STAGE_NAMES), "rundir.STAGE_NAMES lists the stages in order"


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
    sections = stage.sections(config) if callable(stage.sections) else stage.sections
    sections = tuple(s for s in sections if s not in leave_out)
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
        for section in stage.requires
        if getattr(config, section) is None
    ]
    if missing:
        raise PipelineError("\n".join(missing))
    pooled = [name for name in selected if run.home(name) is not run]
    if pooled:
        raise TrialStagesError(
            f"{run.root} trains on the images of {run.pool.root if run.pool else ''}: its "
            f"{', '.join(pooled)} stage(s) run there (`diversynth sweep` makes them)"
        )
    from diversynth.hub import hub_models, offline_unless_answering

    offline_unless_answering(hub_models(config))  # before preflight reads any model's files
    if "prompts" in selected:  # before it builds a record of every prompt
        from diversynth.classes.catalog import load_classes

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
                    made_with=environment.summary(),
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

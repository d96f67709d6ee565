"""Running a sweep: its pools once, then each distinct training as a run of its own.

```
DIR/sweep.json            the sweep as read (what --status and the report show)
DIR/pools/ID/             a run directory: classes, prompts, generate, leaks
DIR/trials/ID/            a run directory whose .state/pool.json names its pool: train,
                          evaluate, report; log.txt holds its console output
DIR/results.parquet       one row per combination and evaluation set
DIR/report/               the sweep's figure and tables, linking each trial's report
```

A trial is `diversynth run TRIAL/config.yaml --out TRIAL --stages train,evaluate,report` in
a child process: the same command whether the trials run one after another, several at
once, or as Ray tasks on a cluster, and a trial that fails (out of memory, say) takes only
itself down. A trial's folder is named by what its weights depend on (its config and its
pool), so its result does not depend on the other trials, their order, or how many run
at once; a killed sweep resumes each unfinished trial from its own checkpoint.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from diversynth.commands.sweep.folder import (
    FAILED_RECORD,
    SweepDir,
    SweepFolderError,
    trial_state,
)
from diversynth.commands.sweep.spec import Sweep, Trial
from diversynth.config import dump_config
from diversynth.errors import DiversynthError
from diversynth.pipeline import POOL_STAGES, STAGES, TRIAL_STAGES
from diversynth.run.progress import console
from diversynth.run.rundir import RunDir, write_json, write_text


class SweepRunError(DiversynthError):
    """Trials failed: the sweep ends with exit 1 naming them (a rerun retries them)."""


def up_to_date(trial: Trial, run: RunDir) -> bool:
    """Whether the trial's stages finished with the config and pool they have now (the
    pipeline's own fingerprints: a pool made again makes its trials train again)."""
    from diversynth.pipeline import fingerprint

    if trial_state(run) != "done":
        return False
    for stage in STAGES:
        if stage.pooled:
            continue
        state = run.read_state(stage.name)
        if state is None or state.fingerprint != fingerprint(stage, trial.config, run):
            return False
    return True


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """A trial's process ends when the sweep's does (SIGKILL included): the next sweep
    finds its trial unlocked and resumes it from its checkpoint."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def trial_commands(run: RunDir, processes: int = 1) -> list[list[str]]:
    """The commands that run a trial: `diversynth run` of its stages; with several
    processes, its training under torchrun (DDP, one process a GPU), then the rest."""

    def run_stages(stages: tuple[str, ...]) -> list[str]:
        return [sys.executable, "-m", "diversynth", "run", str(run.config), "--out",
                str(run.root), "--stages", ",".join(stages)]  # fmt: skip

    if processes <= 1:
        return [run_stages(TRIAL_STAGES)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(processes)]  # fmt: skip
    train = [*torchrun, "-m", "diversynth", "train", str(run.config), "--out", str(run.root)]
    at = TRIAL_STAGES.index("train")  # trained under torchrun, the trial's other stages not
    before, after = TRIAL_STAGES[:at], TRIAL_STAGES[at + 1 :]
    return [*([run_stages(before)] if before else []), train, run_stages(after)]


def run_trial_process(run_root: str, env: dict[str, str], processes: int = 1) -> tuple[int, str]:
    """One trial in child processes; the exit code and last error line. Also the body of
    the Ray task (no argument of it needs more than the shared file system)."""
    run = RunDir(run_root)
    log = run.root / "log.txt"
    start = log.stat().st_size if log.is_file() else 0
    code = 0
    with log.open("ab") as out:
        for command in trial_commands(run, processes):
            out.write(f"\n$ {' '.join(command)}\n".encode())
            out.flush()
            code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **env, "COLUMNS": "160"},
                                   preexec_fn=_die_with_parent)  # fmt: skip
            if code:
                break
    with log.open("rb") as handle:  # this attempt's lines only
        handle.seek(start)
        text = handle.read().decode(errors="replace")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("$ ")]
    errors = [line for line in lines if line.startswith("error:")]
    return code, (errors[-1] if errors else lines[-1] if lines else f"exit code {code}")


def prepare_trial(sweep: Sweep, folder: SweepDir, trial: Trial) -> RunDir:
    """The trial's run directory, its pool recorded and its config written."""
    run = folder.trial(trial)
    run.claim()
    run.use_pool(folder.pool(trial.pool), POOL_STAGES)
    text = dump_config(trial.config)
    if not run.config.is_file() or run.config.read_text() != text:
        write_text(run.config, text)
    return run


def thread_env(cpus_per_trial: int) -> dict[str, str]:
    """Every trial computes with `cpus_per_trial` threads on every engine: CPU kernels sum
    in an order that depends on the thread count, so weights equal from run to run only
    at one count."""
    return {name: str(cpus_per_trial) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def _slots(spec_parallel: int, gpus_per_trial: int, cpus_per_trial: int) -> list[dict[str, str]]:
    """The environment of each of the trials that run at once: its GPUs on a machine with
    GPUs (CUDA_VISIBLE_DEVICES), and its thread count."""
    threads = thread_env(cpus_per_trial)
    gpus = _visible_gpus()
    if gpus and gpus_per_trial:
        count = max(1, min(spec_parallel, len(gpus) // gpus_per_trial))
        share = gpus_per_trial
        return [{**threads, "CUDA_VISIBLE_DEVICES": ",".join(gpus[i * share:(i + 1) * share])}
                for i in range(count)]  # fmt: skip
    return [dict(threads) for _ in range(spec_parallel)]


def _visible_gpus() -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g for g in listed.split(",") if g.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU")]


Runner = Callable[[list[tuple[Trial, RunDir]]], dict[str, tuple[int, str]]]


def local_runner(parallel: int, gpus_per_trial: int, cpus_per_trial: int,
                 processes: int = 1) -> Runner:  # fmt: skip
    """Trials in child processes, `parallel` at once, each on the slot's devices."""

    def run_all(todo: list[tuple[Trial, RunDir]]) -> dict[str, tuple[int, str]]:
        slots = _slots(parallel, gpus_per_trial, cpus_per_trial)
        free = list(range(len(slots)))
        results: dict[str, tuple[int, str]] = {}

        def one(item: tuple[Trial, RunDir]) -> None:
            trial, run = item
            slot = free.pop()
            try:
                console.print(f"trial {trial.id}: training ({trial.label()})", highlight=False,
                              soft_wrap=True)  # fmt: skip
                results[trial.id] = run_trial_process(str(run.root), slots[slot], processes)
            finally:
                free.append(slot)

        with ThreadPoolExecutor(max_workers=len(slots)) as pool:
            list(pool.map(one, todo))
        return results

    return run_all


def run_sweep(sweep: Sweep, folder: SweepDir, runner: Runner) -> dict[str, str]:
    """Pools, then trials; {trial id: state}. Raises SweepRunError naming failed trials."""
    from diversynth.pipeline import run_stages

    folder.claim()
    with folder.lock():
        write_json(folder.record, {
            "sweep": str(sweep.path), "spec": sweep.spec.model_dump(mode="json"),
            "trials": [{"id": t.id, "pool": t.pool, "label": t.label()} for t in sweep.trials],
        })  # fmt: skip
        for pool_id, config in sweep.pools.items():
            console.print(f"[bold]pool {pool_id}[/bold]: the stages before training")
            stages = [stage.name for stage in STAGES
                      if stage.pooled and not stage.missing_sections(config)]  # fmt: skip
            run_stages(config, folder.pool(pool_id), stages=stages)
        todo = []
        for trial in sweep.trainings().values():
            run = prepare_trial(sweep, folder, trial)
            if up_to_date(trial, run):
                console.print(f"trial {trial.id}: done ({trial.label()})", highlight=False,
                              soft_wrap=True)  # fmt: skip
                continue
            todo.append((trial, run))
        repeats = len(sweep.trials) - len(sweep.trainings())
        if repeats:
            console.print(f"sweep: {repeats} combination(s) are the same training as another "
                          "(no synthetic images: the synthetic settings do not matter); each "
                          "is trained once", highlight=False)  # fmt: skip
        results = runner(todo)
        failed = []
        for trial, run in todo:
            code, line = results.get(trial.id, (1, "not run"))
            record = run.state_dir / FAILED_RECORD
            if code == 0:
                record.unlink(missing_ok=True)
            else:
                write_json(record, {"exit_code": code, "error": line, "at": time.time()})
                failed.append(f"{trial.id} ({trial.label()}): {line}")
        from diversynth.commands.sweep.report import build_sweep_report
        from diversynth.commands.sweep.results import write_results

        table = write_results(sweep, folder)
        build_sweep_report(table.to_pylist(), list(sweep.spec.vary), folder.report,
                           classes=_worst_classes(sweep, folder))  # fmt: skip
    if failed:
        raise SweepRunError(f"sweep: {len(failed)} trial(s) failed (a rerun retries only "
                            f"them; each one's log.txt has the rest): {failed[0]}")  # fmt: skip
    return {t.id: trial_state(folder.trial(t)) for t in sweep.trainings().values()}


def _worst_classes(sweep: Sweep, folder: SweepDir) -> list[dict[str, Any]]:
    """The sweep report's table of classes of lowest top-1 (the first pool's classes)."""
    from diversynth.commands.sweep.report import worst_classes
    from diversynth.commands.sweep.spec import trains_on_synthetic
    from diversynth.run.artifacts.records import read_classes

    first = next(iter(sweep.trainings().values()))
    pool = folder.trial(first)
    if not pool.classes.is_file():
        return []
    names = [str(c["name"]) for c in read_classes(pool)]
    runs = [(trains_on_synthetic(t.config), json.loads(run.eval.read_text()))
            for t in sweep.trainings().values()
            if (run := folder.trial(t)).eval.is_file() and t.pool == first.pool]  # fmt: skip
    return worst_classes(runs, names)


def read_record(folder: SweepDir) -> dict[str, Any]:
    if not folder.record.is_file():
        raise SweepFolderError(f"--status: {str(folder.root)!r} is not a diversynth sweep folder")
    try:
        record = json.loads(folder.record.read_text())
        if all(isinstance(t, dict) and "id" in t for t in record["trials"]):
            return record
    except (ValueError, KeyError, TypeError):
        pass
    raise SweepFolderError(f"--status: {folder.record} is damaged: run the sweep again to "
                           "rewrite it")  # fmt: skip

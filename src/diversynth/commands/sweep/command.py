"""`diversynth sweep`: check everything, then run; `--status`: each trial's state."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.table import Table

from diversynth.commands.sweep.folder import SweepDir, trial_state
from diversynth.commands.sweep.runner import local_runner, read_record, run_sweep
from diversynth.commands.sweep.spec import CONFIRM_ABOVE, Sweep, SweepError, expand, read_sweep
from diversynth.run.progress import console
from diversynth.run.rundir import RunDir, read_jsonl


def pool_size_problem(sweep: Sweep) -> str | None:
    """The trial that asks for the most synthetic images of its strategies beyond what its
    pool will make, found before any image is made, with the prompts.per_class that would
    be enough (uniform budgets: the others depend on the real counts, checked by the train
    stage)."""
    from diversynth import pipeline
    from diversynth.config import ConfigError
    from diversynth.models.cost import real_image_count
    from diversynth.stages.declaration import Estimate

    estimates: dict[str, Estimate] = {}
    worst: tuple[float, str] | None = None
    for trial in sweep.trainings().values():
        config, pool = trial.config, sweep.pools[trial.pool]
        scale = config.train.synthetic_scale
        real = real_image_count(config)[0] if scale else None
        if real is None or not scale or pool.prompts.budget.kind != "uniform":
            continue
        if trial.pool not in estimates:
            try:
                estimates[trial.pool] = pipeline.estimate(pool, through="prompts")
            except ConfigError as exc:  # a prompt count the pool's classes cannot take
                raise SweepError(f"trial ({trial.label()}): {exc}") from None
        found, prompts = estimates[trial.pool], pool.prompts
        chosen = config.train.strategies or [s for s, n in found.images_by_strategy.items() if n]
        made = sum(found.images_by_strategy.get(s, 0) for s in chosen)
        per_prompt = prompts.images_per_prompt * found.classes
        wanted = int(scale * real + 0.5)
        if wanted <= made:
            continue
        share = sum(prompts.shares.get(s, 0.0) for s in chosen) / sum(prompts.shares.values())
        needed = wanted / (share * per_prompt)
        if worst is None or needed > worst[0]:
            line = (f"trial ({trial.label()}): {scale:g} x {real:,} real images needs "
                    f"{wanted:,} synthetic images of {', '.join(chosen)}; the pool makes "
                    f"{made:,} (prompts.per_class {prompts.per_class}): set prompts.per_class "
                    f"to about {math.ceil(needed):,} or more")  # fmt: skip
            worst = (needed, line)
    return worst[1] if worst else None


def run_command(path: Path, out: Path, parallel: int | None, yes: bool) -> None:
    spec = read_sweep(path)
    sweep = expand(spec, path)
    if any(trial.config.data is None for trial in sweep.trials):
        raise SweepError(
            "base: the config has no data section: a sweep's trials train and "
            "evaluate on real data (`diversynth plan` prices it all the same)"
        )
    trainings = len(sweep.trainings())
    if trainings > CONFIRM_ABOVE and not yes:
        raise SweepError(f"sweep: {trainings} trainings ({len(sweep.trials)} combinations), "
                         f"more than {CONFIRM_ABOVE}: add --yes to run them")  # fmt: skip
    if problem := pool_size_problem(sweep):
        raise SweepError(problem)
    if spec.engine == "ray":
        from diversynth.commands.sweep.ray_trials import ray_runner

        runner = ray_runner(spec)
    else:
        runner = local_runner(parallel or spec.parallel, spec.gpus_per_trial, spec.cpus_per_trial,
                              spec.processes_per_trial)  # fmt: skip
    console.print(f"sweep: {len(sweep.trials)} combinations, {trainings} trainings, "
                  f"{len(sweep.pools)} pool(s)", highlight=False)  # fmt: skip
    folder = SweepDir(out)
    states = run_sweep(sweep, folder, runner)
    console.print(f"sweep: {sum(s == 'done' for s in states.values())} of {len(states)} "
                  f"trainings done; {folder.results}, {folder.report / 'index.html'}",
                  highlight=False, soft_wrap=True)  # fmt: skip


def latest(run: RunDir) -> str:
    """The trial's latest figure: top-1 when evaluated, else its last training step."""
    if run.eval.is_file():
        sets = json.loads(run.eval.read_text()).get("sets", {})
        return ", ".join(f"{name} top-1 {r.get('top1')}" for name, r in sets.items())
    if run.train_metrics.is_file():
        steps = [r for r in read_jsonl(run.train_metrics) if "step" in r]
        if steps:
            return f"step {steps[-1]['step']}, loss {steps[-1].get('loss', float('nan')):.4f}"
    return ""


def show_status(root: Path) -> None:
    folder = SweepDir(root)
    record = read_record(folder)
    table = Table("training", "state", "combinations", "latest")
    by_id: dict[str, list[str]] = {}
    for trial in record["trials"]:
        label = str(trial.get("label", ""))
        by_id.setdefault(str(trial["id"]), []).append(label.replace("train.", ""))
    for trial_id, labels in by_id.items():
        run = RunDir(root / "trials" / trial_id)
        state = trial_state(run) if run.root.is_dir() else "pending"
        table.add_row(trial_id, state, "; ".join(labels), latest(run) if run.root.is_dir() else "")
    console.print(table, markup=False, soft_wrap=True)

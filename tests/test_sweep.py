"""Sweeps: a grid of trainings on one pool of generated images (`diversynth sweep`)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import (
    OFFLINE_CONFIG,
    REPO,
    cli,
    copy_before_generate,
    one_line,
    set_args,
    tree_snapshot,
)

from diversynth.commands.sweep.spec import CONFIRM_ABOVE, expand, read_sweep
from diversynth.pipeline import POOL_STAGES, TRIAL_STAGES
from diversynth.run.rundir import RunDir, RunFileError

# the finished run's pool: 1024 real training images; 20 naive, 50 cd, 30 sd images.
# 8 synthetic images a step (of 64) fit the smallest scale's 10 images
TRAIN = {"train.synthetic_fraction": 0.125, "train.checkpoint_every": 4,
         "report.images_per_class": 2}  # fmt: skip
SCALES = [0, 0.01, 0.019]  # 0, 10 and 19 images: the naive ones hold 20
BOTH = [["naive"], ["naive", "cd", "sd"]]


def _settings(overrides: list[str]) -> dict[str, object]:
    pairs = (item.split("=", 1) for item in overrides)
    return {key: yaml.safe_load(value) for key, value in pairs}


def _write(folder: Path, kit_overrides: list[str], name: str = "sweep.yaml",
           **fields: object) -> Path:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    data = {"base": str(OFFLINE_CONFIG), "set": {**_settings(kit_overrides), **TRAIN}, **fields}
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_trials_are_every_combination_less_the_excluded_and_trained_once(
    tmp_path: Path, kit_overrides: list[str]
) -> None:
    path = _write(tmp_path, kit_overrides, vary={
        "train.synthetic_scale": [0, 0.01], "train.strategies": [["naive"], ["cd"]],
        "seed": [0, 1], "train.lr": [0.05, 0.1], "train.epochs": [1, 2],
    }, zip=[["train.lr", "train.epochs"]],
       exclude=[{"train.synthetic_scale": 0.01, "seed": 1.0}])  # fmt: skip
    sweep = expand(read_sweep(path), path)
    # 2 scales x 2 strategies x 2 seeds x 2 (lr, epochs) together, less 4 excluded
    assert len(sweep.trials) == 12
    assert {(t.values["train.lr"], t.values["train.epochs"]) for t in sweep.trials} == {
        (0.05, 1), (0.1, 2)}  # fmt: skip
    assert not any(t.values["train.synthetic_scale"] == 0.01 and t.values["seed"] == 1
                   for t in sweep.trials)  # fmt: skip
    # at scale 0 the strategies do not matter: 2 seeds x 2 (lr, epochs) trainings, and the
    # real-only trial's config says it trains on no synthetic image of any strategy
    real_only = {t.id for t in sweep.trials if t.values["train.synthetic_scale"] == 0}
    assert len(real_only) == 4
    assert all(t.config.train.strategies is None for t in sweep.trials
               if t.values["train.synthetic_scale"] == 0)  # fmt: skip
    assert len(sweep.trainings()) == 4 + 4
    assert len(sweep.pools) == 1  # seed, lr and epochs are training's: one pool
    # a trial's identity is its own: the same whatever other trials the sweep holds
    alone = _write(tmp_path, kit_overrides, "alone.yaml", vary={
        "train.synthetic_scale": [0.01], "train.strategies": [["cd"]], "seed": [0],
        "train.lr": [0.1], "train.epochs": [2]})  # fmt: skip
    (trial,) = expand(read_sweep(alone), alone).trials
    assert trial.id in {t.id for t in sweep.trials}


def test_pool_by_makes_a_pool_for_each_value_shared_by_its_trials(
    tmp_path: Path, kit_overrides: list[str]
) -> None:
    path = _write(tmp_path, kit_overrides, vary={"generate.steps": [2, 3], "seed": [0, 1]},
                  pool_by=["generate.steps"])  # fmt: skip
    sweep = expand(read_sweep(path), path)
    assert len(sweep.pools) == 2 and len(sweep.trainings()) == 4
    by_steps = {t.values["generate.steps"]: t.pool for t in sweep.trials}
    assert by_steps[2] != by_steps[3]
    assert {sweep.pools[by_steps[s]].generate.steps for s in (2, 3)} == {2, 3}
    # the pool keeps the base config's seed: the seed axis seeds training only
    assert all(config.seed == 0 for config in sweep.pools.values())
    assert {t.config.seed for t in sweep.trials} == {0, 1}


@pytest.mark.slow  # reads Fashion-MNIST's labels: 4 s
def test_the_offline_sweep_is_the_grid_it_says() -> None:
    """configs/sweep-offline.yaml (about 5 minutes: run by hand, figures in docs/sweeps.md):
    3 scales x 2 strategy sets x 2 seeds, scale 0 once a seed, one pool that holds scale
    2 of naive images alone."""
    from diversynth.commands.sweep.command import pool_size_problem

    path = REPO / "configs" / "sweep-offline.yaml"
    sweep = expand(read_sweep(path), path)
    assert len(sweep.trials) == 12 and len(sweep.trainings()) == 10 and len(sweep.pools) == 1
    assert pool_size_problem(sweep) is None


def _bad(tmp_path: Path, kit_overrides: list[str], **fields: object) -> str:
    path = _write(tmp_path, kit_overrides, **fields)
    out = tmp_path / "out"
    line = one_line(2, "sweep", str(path), "--out", str(out))
    assert not out.exists(), "a refused sweep wrote its folder"
    return line


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"vary": {"train.synthetic_scal": [1]}},
            "vary: unknown key 'train.synthetic_scal'; did you mean 'train.synthetic_scale'?",
        ),
        (
            {"vary": {"train.synthetic_scale": [0, -1]}},
            "trial 2 (train.synthetic_scale=-1): train.synthetic_scale: Input should be greater "
            "than or equal to 0",
        ),
        ({"vary": {"seed": []}}, "vary.seed: no values"),
        (
            {"vary": {"train.strategies": [["naive", "naive"]]}},
            "train.strategies: naive, naive names a strategy twice",
        ),
        (
            {"vary": {"generate.steps": [2, 3]}},
            "vary: generate.steps changes the stages before training",
        ),
        (
            {"vary": {"seed": [0]}, "pool_by": ["generate.steps"]},
            "pool_by: 'generate.steps' is not an axis of vary",
        ),
        (
            {"vary": {"train.synthetic_scale": [0.5]}},
            "needs 512 synthetic images of naive, cd, sd; the pool makes 100 "
            "(prompts.per_class 10): set prompts.per_class to about 52 or more",
        ),
        (
            {"vary": {"seed": list(range(CONFIRM_ABOVE + 1))}},
            f"sweep: {CONFIRM_ABOVE + 1} trainings ({CONFIRM_ABOVE + 1} combinations), more than "
            f"{CONFIRM_ABOVE}: add --yes to run them",
        ),
        ({"vary": {"seed": [0]}, "base": "no-such.yaml"}, "no-such.yaml"),
        ({"vary": {"seed": [0]}, "exclude": [{"seed": 0}]}, "every combination is excluded"),
        ({"vary": {"seed": [0]}, "engine": "slurm"}, "engine: Input should be 'local' or 'ray'"),
        (
            {
                "vary": {"train.synthetic_scale": [0.5], "prompts.per_class": [10, 2 * 10**6]},
                "pool_by": ["prompts.per_class"],
            },
            "trial (train.synthetic_scale=0.5, prompts.per_class=2000000): prompts.per_class: "
            "10 classes with per_class 2,000,000 make 20,000,000 prompts, above the bound of "
            "10,000,000",
        ),
    ],
    ids=[
        "unknown-key",
        "refused-value",
        "empty-axis",
        "strategy-twice",
        "pool-axis",
        "pool-by-not-an-axis",
        "pool-too-small",
        "too-many",
        "no-base",
        "all-excluded",
        "engine",
        "pool-beyond-the-bound",
    ],  # fmt: skip
)
def test_a_bad_sweep_is_one_line_and_writes_nothing(
    tmp_path: Path, kit_overrides: list[str], fields: dict[str, object], expected: str
) -> None:
    assert expected in _bad(tmp_path, kit_overrides, **fields)


def test_a_sweep_folder_of_the_users_or_in_use_is_refused(
    tmp_path: Path, kit_overrides: list[str]
) -> None:
    path = _write(tmp_path, kit_overrides, vary={"seed": [0]})
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    before = tree_snapshot(mine)
    line = one_line(2, "sweep", str(path), "--out", str(mine))
    assert "holds files that are not a diversynth sweep (notes.txt)" in line
    assert tree_snapshot(mine) == before
    # another sweep holds the folder's lock
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "sweep.json").write_text("{}")
    with (busy / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        line = one_line(2, "sweep", str(path), "--out", str(busy))
    assert "another diversynth sweep is working in" in line
    assert one_line(2, "sweep", "--status", str(mine)).endswith("is not a diversynth sweep folder")


def test_a_trial_run_directory_runs_only_the_training_stages(
    tmp_path: Path, kit_overrides: list[str]
) -> None:
    """A trial's pool stages run in its pool, never in the trial (nothing is remade there)."""
    pool, trial = RunDir(tmp_path / "pool"), RunDir(tmp_path / "trial")
    pool.claim()
    trial.claim()
    trial.use_pool(pool, POOL_STAGES)
    again = RunDir(trial.root)  # the record is read back: the pool is the trial's inputs
    assert again.pool is not None and again.pool.root.resolve() == pool.root.resolve()
    assert again.manifest.resolve() == pool.root.resolve() / "manifest.parquet"
    assert again.checkpoint == trial.root / "train" / "model.safetensors"
    line = one_line(
        2,
        "run",
        str(OFFLINE_CONFIG),
        "--out",
        str(trial.root),
        "--stages",
        "generate,train",
        *set_args(kit_overrides),
    )
    assert "its generate stage(s) run there" in line


def test_a_trial_on_several_processes_trains_under_torchrun_then_runs_the_rest(
    tmp_path: Path,
) -> None:
    from diversynth.commands.sweep.runner import trial_commands

    run = RunDir(tmp_path / "trial")
    (alone,) = trial_commands(run, processes=1)
    assert alone[alone.index("--stages") + 1] == "train,evaluate,report"
    train, rest = trial_commands(run, processes=2)
    assert train[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert train[6:9] == ["-m", "diversynth", "train"]
    assert rest[rest.index("--stages") + 1] == "evaluate,report"


def test_the_pool_record_names_the_stages_that_lie_in_the_pool(tmp_path: Path) -> None:
    """The stages that declare themselves pooled lie in the pool, the rest in the trial; a
    record written before it named them stands for the four pool stages of then."""
    assert POOL_STAGES == ("classes", "prompts", "generate", "leaks")
    assert TRIAL_STAGES == ("train", "evaluate", "report")
    pool, trial = RunDir(tmp_path / "pool"), RunDir(tmp_path / "trial")
    pool.claim()
    trial.claim()
    trial.use_pool(pool, ["classes", "prompts"])
    record = trial.state_dir / "pool.json"
    assert json.loads(record.read_text()) == {"path": "../pool", "stages": ["classes", "prompts"]}
    again = RunDir(trial.root)
    assert again.home("prompts").root.resolve() == pool.root.resolve()
    assert again.home("generate") is again and again.home("train") is again

    record.write_text(json.dumps({"path": "../pool"}))  # as written before stages were named
    earlier = RunDir(trial.root)
    assert [earlier.home(s) is earlier for s in (*POOL_STAGES, *TRIAL_STAGES)] == [
        False, False, False, False, True, True, True,
    ]  # fmt: skip
    for damaged in ({"path": "../pool", "stages": "classes"}, {"path": 3}, ["../pool"]):
        record.write_text(json.dumps(damaged))
        damaged_run = RunDir(trial.root)
        for _ in range(2):  # every time it is asked, not only the first
            with pytest.raises(RunFileError, match="pool.json: not a pool record"):
                _ = damaged_run.pool


# ---------------------------------------------------------------- end to end (slow)


def _prepare(folder: Path, finished_run: Path, sweep_path: Path, generate: bool = False) -> None:
    """The sweep folder with its pool taken from the finished run (classes and prompts;
    with `generate`, its images too), as an earlier sweep of this base would leave it."""
    (pool_id,) = expand(read_sweep(sweep_path), sweep_path).pools
    target = folder / "pools" / pool_id
    if generate:
        copy_before_generate(finished_run, target)
    else:
        shutil.copytree(finished_run, target)
    folder.mkdir(exist_ok=True)
    (folder / "sweep.json").write_text("{}")


def _weights(folder: Path) -> dict[str, bytes]:
    return {p.parent.parent.name: p.read_bytes()
            for p in sorted(folder.glob("trials/*/train/model.safetensors"))}  # fmt: skip


def _sweep(*args: str) -> subprocess.CompletedProcess[str]:
    result = cli("sweep", *args, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_sweep_makes_one_pool_and_each_trial_does_not_depend_on_the_others(
    finished_run: Path, kit_overrides: list[str], tmp_path: Path
) -> None:
    first = tmp_path / "first"
    path = _write(tmp_path, kit_overrides, vary={
        "train.synthetic_scale": SCALES[::2], "train.strategies": BOTH})  # fmt: skip
    _prepare(first, finished_run, path, generate=True)
    _sweep(str(path), "--out", str(first))

    # the pool's images were made once, for all trials: 100 images, not 100 x 3
    (pool,) = (RunDir(p) for p in (first / "pools").iterdir())
    generated = pool.read_state("generate")
    assert generated is not None and generated.summary["images_generated"] == 100
    assert pq.read_metadata(pool.manifest).num_rows == 100
    # every combination a row; scale 0 trained once for both strategies
    rows = pq.read_table(first / "results.parquet").to_pylist()
    assert len(rows) == 4 and {r["state"] for r in rows} == {"done"}
    assert len({r["training"] for r in rows}) == 3
    used = {(r["train.synthetic_scale"], r["train.strategies"]): r["synthetic_used"] for r in rows}
    assert used == {
        (0, "naive"): 0,
        (0, "naive+cd+sd"): 0,
        (0.019, "naive"): 19,
        (0.019, "naive+cd+sd"): 19,
    }
    assert all(r["top1"] is not None and r["set"] == "fashion-mnist/test" for r in rows)
    assert all(not (first / "trials" / t / "shards").exists() for t in _weights(first))
    page = (first / "report" / "index.html").read_text()
    assert 'id="sweep-plot"' in page and 'id="ablation"' in page and 'id="worst-classes"' in page
    assert (first / "report" / "plots" / "sweep_top1_vs_scale.png").stat().st_size > 10_000
    for training in {r["training"] for r in rows}:
        assert f'href="../trials/{training}/report/index.html"' in page
        assert (first / "trials" / training / "report" / "index.html").is_file()
    status = cli("sweep", "--status", str(first))
    assert status.returncode == 0 and (status.stdout + status.stderr).count(" done ") == 3

    # the synthetic trials again, in the other order and two at once: the same weights
    second = tmp_path / "second"
    reverse = _write(tmp_path, kit_overrides, "reverse.yaml", vary={
        "train.strategies": BOTH[::-1], "train.synthetic_scale": SCALES[2:]})  # fmt: skip
    shutil.copytree(first / "pools", second / "pools")
    (second / "sweep.json").write_text("{}")
    _sweep(str(reverse), "--out", str(second), "--parallel", "2")
    again, reference = _weights(second), _weights(first)
    assert len(again) == 2 and all(again[t] == reference[t] for t in again)

    # a sweep killed (SIGKILL) while a trial trains resumes it to the same weights
    third = tmp_path / "third"
    one = _write(tmp_path, kit_overrides, "one.yaml", vary={
        "train.synthetic_scale": [0.019], "train.strategies": [["naive"]]})  # fmt: skip
    shutil.copytree(first / "pools", third / "pools")
    (third / "sweep.json").write_text("{}")
    proc = subprocess.Popen([sys.executable, "-m", "diversynth", "sweep", str(one), "--out",
                             str(third)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    metrics = None
    while proc.poll() is None and time.monotonic() < deadline:
        metrics = next(iter(third.glob("trials/*/train/metrics.jsonl")), None)
        if metrics is not None and metrics.read_text().count('"loss"') >= 6:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert metrics is not None
    state = metrics.parent / "state.safetensors"
    deadline = time.monotonic() + 10  # the trial's process dies with the sweep's
    while _locked(metrics.parent.parent) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state.is_file()
    _sweep(str(one), "--out", str(third))
    trial = metrics.parent.parent
    summary = json.loads((trial / ".state" / "train.json").read_text())["summary"]
    assert summary["resumed_from_step"] > 0
    assert _weights(third)[trial.name] == reference[trial.name]


def _locked(run: Path) -> bool:
    with (run / ".lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_trials_on_a_local_ray_cluster_train_the_weights_a_local_sweep_does(
    finished_run: Path, kit_overrides: list[str], tmp_path: Path, ray_env: dict[str, str]
) -> None:
    vary = {"train.synthetic_scale": [0.01], "train.strategies": [["naive", "cd", "sd"]]}
    local = _write(tmp_path, kit_overrides, "local.yaml", vary=vary)
    on_ray = _write(tmp_path, kit_overrides, "ray.yaml", vary=vary, engine="ray",
                    cpus_per_trial=1)  # fmt: skip
    for name, path in (("local", local), ("ray", on_ray)):
        _prepare(tmp_path / name, finished_run, path)
    _sweep(str(local), "--out", str(tmp_path / "local"))
    result = cli("sweep", str(on_ray), "--out", str(tmp_path / "ray"), timeout=600, env=ray_env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "queued on Ray" in result.stdout + result.stderr
    ray_weights, local_weights = _weights(tmp_path / "ray"), _weights(tmp_path / "local")
    assert len(ray_weights) == 1 and ray_weights == local_weights


@pytest.mark.slow
def test_smaller_scales_pick_subsets_of_larger_ones_from_the_pool(finished_run: Path) -> None:
    """On a real pool's manifest: scale 0.01's images are among scale 0.019's, per class
    and strategy, and each class gives its share."""
    from diversynth.stages.train.synthetic import synthetic_images

    run = RunDir(finished_run)

    def chosen(scale: float, strategies: list[str]) -> set[tuple[int, int]]:
        images = synthetic_images(run, 1000, scale, lambda im: im, strategies=strategies)
        assert images is not None
        return set(zip(images.shard_ids.tolist(), images.offsets.tolist(), strict=True))

    for strategies in BOTH:
        small, large = chosen(0.01, strategies), chosen(0.019, strategies)
        assert len(small) == 10 and len(large) == 19 and small <= large
    mixed = synthetic_images(run, 1000, 0.03, lambda im: im, strategies=["naive", "cd", "sd"])
    assert mixed is not None
    assert np.bincount(mixed.labels, minlength=10).tolist() == [3] * 10


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_failing_trial_is_marked_the_others_go_on_and_a_rerun_retries_only_it(
    finished_run: Path, kit_overrides: list[str], tmp_path: Path
) -> None:
    # the trial that trains does so in two processes (torchrun, gloo on the CPU)
    path = _write(tmp_path, kit_overrides, vary={
        "train.synthetic_scale": [0.01], "train.batch_size": [64, 100_000]},
        processes_per_trial=2)  # fmt: skip
    folder = tmp_path / "sweep"
    _prepare(folder, finished_run, path)
    result = cli("sweep", str(path), "--out", str(folder), timeout=600)
    assert result.returncode == 1, (result.stdout + result.stderr)[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "1 trial(s) failed" in errors[0]
    assert "train.batch_size=100000" in errors[0] and "train.batch_size: 100000" in errors[0]
    rows = {r["train.batch_size"]: r for r in pq.read_table(folder / "results.parquet").to_pylist()}
    assert rows[64]["state"] == "done" and rows[64]["top1"] is not None
    assert rows[100_000]["state"] == "failed" and rows[100_000]["top1"] is None
    failed = RunDir(folder / "trials" / rows[100_000]["training"])
    record = json.loads((failed.state_dir / "failed.json").read_text())
    assert record["exit_code"] != 0 and "train.batch_size" in record["error"]
    trained = json.loads((folder / "trials" / rows[64]["training"] / ".state" / "train.json")
                         .read_text())["summary"]  # fmt: skip
    assert trained["processes"] == 2
    done_log = folder / "trials" / rows[64]["training"] / "log.txt"
    before = done_log.read_text()
    # a rerun tries the failed trial again and leaves the finished one alone
    again = cli("sweep", str(path), "--out", str(folder), timeout=600)
    assert again.returncode == 1
    assert done_log.read_text() == before
    assert (failed.root / "log.txt").read_text().count("\n$ ") == 2  # torchrun's, twice

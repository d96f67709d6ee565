"""The ray engine: a local Ray with two workers, killed mid-generation and resumed, makes
the same shards, byte for byte, as the local engine."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    OFFLINE_CONFIG,
    REPO,
    assert_same_shards,
    cli,
    copy_before_generate,
    set_args,
)

RAY = ["--set", "generate.engine=ray", "--set", "generate.ray.workers=2"]


def test_a_pool_this_machine_cannot_hold_is_one_clear_error(kit_overrides: list[str]) -> None:
    from diversynth.config import load_config
    from diversynth.generate.ray_engine import RayEngineError, check_pool

    too_many = (os.cpu_count() or 1) + 1
    config = load_config(OFFLINE_CONFIG, [*kit_overrides, "generate.engine=ray",
                                          f"generate.ray.workers={too_many}"])  # fmt: skip
    with pytest.raises(RayEngineError, match=rf"generate.ray.workers: {too_many} workers x 1 CPU"):
        check_pool(config)
    gpus = load_config(OFFLINE_CONFIG, [*kit_overrides, "generate.ray.gpus_per_worker=1"])
    if not torch.cuda.is_available():
        with pytest.raises(RayEngineError, match="need 1; this machine has 0 GPUs"):
            check_pool(gpus)


def _shard_names(folder: Path) -> list[str]:
    """The committed shards (a stats file marks a shard done)."""
    return sorted(p.stem for p in folder.glob("0*.json")) if folder.is_dir() else []


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_ray_engine_killed_and_resumed_equals_local_engine(
    finished_run: Path, kit_overrides: list[str], tmp_path: Path, ray_env: dict[str, str]
) -> None:
    out = copy_before_generate(finished_run, tmp_path / "ray")
    args = ["run", str(OFFLINE_CONFIG), "--out", str(out), "--stages", "classes,prompts,generate",
            *set_args(kit_overrides), *RAY]  # fmt: skip

    # kill the driver at a random moment after the first shard is committed
    proc = subprocess.Popen(
        [sys.executable, "-m", "diversynth", *args],
        cwd=REPO,
        env={**os.environ, **ray_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not _shard_names(out / "shards") and proc.poll() is None:
        assert time.monotonic() < deadline, "no shard was committed in 240 s"
        time.sleep(0.02)
    time.sleep(random.Random(7).uniform(0.0, 1.0))
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1)  # the orphaned workers may still commit the shards they were making
    kept = _shard_names(out / "shards")
    assert len(kept) < 5

    result = cli(*args, env=ray_env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / ".state" / "generate.json").read_text())["summary"]
    assert summary["engine"] == "ray" and summary["workers"] == 2
    # the committed shards are kept (workers of the killed run may commit a few more)
    assert summary["shards"] == 5 and summary["shards_generated"] <= 5 - len(kept)

    # the same shards as the local engine made for finished_run, and nothing else
    assert_same_shards(out, finished_run)
    # the engine is not part of the fingerprint: switching back keeps these shards
    from diversynth.config import load_config
    from diversynth.pipeline import STAGES, fingerprint
    from diversynth.rundir import RunDir

    generate = next(stage for stage in STAGES if stage.name == "generate")
    local, ray = (load_config(OFFLINE_CONFIG, [*kit_overrides, *extra])
                  for extra in ([], ["generate.engine=ray", "generate.ray.workers=2"]))  # fmt: skip
    assert fingerprint(generate, local, RunDir(out)) == fingerprint(generate, ray, RunDir(out))
    assert (
        fingerprint(generate, ray, RunDir(out))
        == json.loads((out / ".state" / "generate.json").read_text())["fingerprint"]
    )


def test_worker_errors_come_back_as_one_plain_line() -> None:
    from ray.exceptions import ActorDiedError, RayTaskError

    from diversynth.generate.ray_engine import RayEngineError, WorkerError, _worker_error

    # what Ray Data hands the driver when a worker's disk is full: the worker's error inside
    # a RayTaskError, with Ray's retry advice appended to the message
    full = WorkerError("No space left on device (/runs/a/shards/000001.tar.1f2e.tmp)\n"
                       "Failed to apply UDF transform after 1/1 attempts.")  # fmt: skip
    error = _worker_error(RayTaskError("submit", "Traceback ...", full).as_instanceof_cause())
    assert isinstance(error, RayEngineError)
    assert str(error) == "No space left on device (/runs/a/shards/000001.tar.1f2e.tmp)"

    # a worker whose models failed to load: only the traceback text survives
    last = "diversynth.vision.generator.GeneratorLoadError: generate.model: cannot load 'x'"
    trace = f'Traceback (most recent call last):\n  File "local.py", line 32\n{last}\n'
    died = ActorDiedError(cause=RayTaskError("__init__", trace, ValueError("x")))
    assert str(_worker_error(died)) == f"a ray worker failed to start: {last}"
    bug = RuntimeError("a bug keeps its traceback")
    assert _worker_error(bug) is bug

"""Shared fixtures: the tiny model kit and a finished offline run, each built once per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
OFFLINE_CONFIG = REPO / "configs" / "offline.yaml"

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Tests that need one of these fixtures are slow: a finished offline run (built once, about
# 3 minutes on 2 quiet cores), the imagenet1k classes run, a llama.cpp server, Ray or a browser.
SLOW_FIXTURES = {"finished_run", "run_copy", "prompts_run", "imagenet_run", "llama_server",
                 "ray_env", "ray_cluster", "browser"}  # fmt: skip
# The first test (on each xdist worker) to need the offline run waits while it is built:
# SmolLM2 asked again for the classes whose answers copied the worked example makes the
# prompts stage take minutes when the 2 cores are busy with other tests.
OFFLINE_RUN_FIXTURES = {"finished_run", "run_copy", "prompts_run"}
OFFLINE_RUN_TIMEOUT = 900


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`pytest -m "not slow"`: the quick subset leaves out what SLOW_FIXTURES names and
    the tests marked slow by hand (those that run the command line or torchrun).

    Order: one test that needs the offline run first, the other tests that need it last.
    pytest-xdist hands out tests in this order, so one worker builds the run (minutes)
    while the other works through the rest, instead of waiting on the build's lock."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if SLOW_FIXTURES & fixtures:
            item.add_marker(pytest.mark.slow)
        if OFFLINE_RUN_FIXTURES & fixtures and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(OFFLINE_RUN_TIMEOUT))
    needs_run = [bool(OFFLINE_RUN_FIXTURES & set(getattr(i, "fixturenames", ()))) for i in items]
    first = needs_run.index(True) if any(needs_run) else -1
    rank = {id(item): 0 if k == first else 2 if needs_run[k] else 1
            for k, item in enumerate(items)}  # fmt: skip
    items.sort(key=lambda item: rank[id(item)])  # stable: file order within each rank


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str,
               build: Callable[[Path], object]) -> Path:  # fmt: skip
    """A folder built by `build(folder)` once per test session, shared by pytest-xdist's
    workers (they share the parent of their temp folders; a file lock lets one build it)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    folder, done = base / name, base / f"{name}.done"
    with FileLock(str(base / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def kit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The model kit: the one setup.sh built in models/tiny when it is of this version
    (the same code made it; 18 s saved), else a fresh one for this session."""
    from diversynth.testing.tiny_models import KIT_VERSION, make_tiny_models

    installed = REPO / "models" / "tiny"
    marker = installed / "KIT_VERSION"
    if marker.is_file() and marker.read_text().strip() == KIT_VERSION:
        return make_tiny_models(installed)  # present: returns the paths, builds nothing
    folder = built_once(tmp_path_factory, "kit", lambda path: make_tiny_models(path / "tiny"))
    return make_tiny_models(folder / "tiny")


@pytest.fixture(scope="session")
def kit_overrides(kit: dict[str, Path]) -> list[str]:
    """--set values that point the offline config at the session's kit, with less real data."""
    return [
        f"generate.model={kit['stable-diffusion']}",
        f"clip.model=local-dir:{kit['open-clip']}",
        "data.train_limit=1024",
        "data.test_limit=512",
        "generate.steps=2",
        "prompts.images_per_prompt=1",  # 100 images in 5 shards of 20
        "generate.images_per_shard=20",
        "generate.height=32",  # 5x less denoising than the demo's 64 px
        "generate.width=32",
        # one thread per generating process, as each ray worker has: both engines give the
        # same bytes (CPU results depend on the thread count)
        "generate.cpu_threads=1",
    ]


def cli(*args: str, cwd: Path = REPO, timeout: float = 600,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run the real `diversynth` command in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "diversynth", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def set_args(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory, kit_overrides: list[str]) -> Path:
    """configs/offline.yaml run end to end once; tests copy it before changing anything."""

    def build(folder: Path) -> None:
        out = folder / "demo"
        result = cli("run", str(OFFLINE_CONFIG), "--out", str(out), *set_args(kit_overrides))
        assert result.returncode == 0, result.stderr[-3000:]

    return built_once(tmp_path_factory, "runs", build) / "demo"


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(finished_run, target)
    return target


def copy_before_generate(finished_run: Path, out: Path) -> Path:
    """The finished run with its classes and prompts (the LLM answers are not redone) and
    nothing from generate on: the state of a run about to generate."""
    shutil.copytree(finished_run, out)
    for name in ("shards", "train", "report"):
        shutil.rmtree(out / name)
    for name in (
        "manifest.parquet",
        "eval.json",
        *(f".state/{s}.json" for s in ("generate", "train", "evaluate", "report")),
    ):
        (out / name).unlink()
    return out


def assert_same_shards(run: Path, reference: Path) -> None:
    """run's shard folder holds the plan, the timm split info and the same 5 shards as
    reference's, byte for byte, and nothing else; the manifests are the same bytes.
    Exact within one kernel set: each shard is made whole by one process, with the same
    batches and the same thread count (generate.cpu_threads), whichever engine runs it."""
    names = sorted(p.name for p in (run / "shards").iterdir())
    suffixes = ("json", "tar", "rows.parquet")
    assert names == sorted(
        ["plan.json", "_info.json"] + [f"{i:06d}.{e}" for i in range(5) for e in suffixes]
    )
    for i in range(5):
        for suffix in ("tar", "rows.parquet"):
            name = f"shards/{i:06d}.{suffix}"
            assert (run / name).read_bytes() == (reference / name).read_bytes(), name
    assert (run / "manifest.parquet").read_bytes() == (reference / "manifest.parquet").read_bytes()


def wait_for_new_temp_file(folder: Path, proc: subprocess.Popen[bytes], limit: float = 180) -> None:
    """Return once a temp file that was not there before appears in `folder` (shard temp
    names are unique: the process has begun writing), or the process has exited."""
    before = {p.name for p in folder.glob("*.tmp")} if folder.is_dir() else set()
    deadline = time.monotonic() + limit
    while proc.poll() is None:
        if folder.is_dir() and {p.name for p in folder.glob("*.tmp")} - before:
            return
        assert time.monotonic() < deadline, f"no new temp file in {folder} in {limit} s"
        time.sleep(0.02)


def tree_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and mtime: equal snapshots mean nothing was touched."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def invoke(*args: str) -> tuple[int, list[str], str]:
    """A command run in this process (typer's runner): exit code, its `error:` lines, and
    all it printed. A crash would be an exception other than SystemExit."""
    from typer.testing import CliRunner

    from diversynth.commands.cli import app

    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return result.exit_code, errors, result.output


def one_line(code: int, *args: str) -> str:
    """The one `error:` line of a command run in this process that exits with `code`."""
    exit_code, errors, output = invoke(*args)
    assert exit_code == code and len(errors) == 1, output[-3000:]
    assert len(errors[0]) < 1000  # a value is shown cut, never whole
    return errors[0]


@pytest.fixture
def ray_env() -> Iterator[dict[str, str]]:
    """A private Ray temp folder (short: Ray puts sockets in it). A SIGKILLed driver leaves
    Ray's node agents running; they are stopped here, found by that folder."""
    folder = tempfile.mkdtemp(prefix="dsray", dir="/tmp")
    yield {"RAY_TMPDIR": folder}
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("RAY_TMPDIR") == folder:
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def ray_cluster(ray_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A Ray cluster of several nodes on this machine (`ray.cluster_utils.Cluster`: each
    node its own raylet and ports): a head that runs no work (0 CPUs); tests add and
    remove worker nodes. Stopped after the test."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_TMPDIR", ray_env["RAY_TMPDIR"])  # the nodes' sockets and logs
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    yield cluster
    cluster.shutdown()

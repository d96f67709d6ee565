"""The ray engine: on a cluster of several nodes on this machine, losing nodes mid-run, it
makes the same shards, byte for byte, as the local engine; an address that does not answer
is one line within its time limit."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

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
    from diversynth.stages.generate.ray_engine import RayEngineError, check_pool

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


# a ray worker's temp tar: NNNNNN.tar.<its node's tag>-<12 hex>.tmp
_WORKER_TEMP = re.compile(r"^\d{6}\.tar\.([0-9a-f]{1,16})-[0-9a-f]{12}\.tmp$")


class _Run:
    """`diversynth ARGS` started; a helper thread notes, until it ends, the node tag of
    every worker seen writing a shard (its temp tar carries the tag)."""

    def __init__(self, args: list[str], out: Path, env: dict[str, str]) -> None:
        self.shards = out / "shards"
        self.writers: set[str] = set()
        self.proc = subprocess.Popen([sys.executable, "-m", "diversynth", *args], cwd=REPO,
                                     env={**os.environ, "COLUMNS": "200", **env}, text=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while self.proc.poll() is None:
            if self.shards.is_dir():
                for entry in os.scandir(self.shards):
                    if found := _WORKER_TEMP.match(entry.name):
                        self.writers.add(found.group(1))
            time.sleep(0.01)

    def wait_for_a_writer(self) -> str:
        """The node tag of the first worker seen making a shard."""
        deadline = time.monotonic() + 240
        while not self.writers and self.proc.poll() is None:
            assert time.monotonic() < deadline, "no worker started a shard in 240 s"
            time.sleep(0.005)
        assert self.writers, "the run ended before a worker was seen making a shard"
        return next(iter(self.writers))

    def finish(self) -> str:
        """The run's stderr, once it has ended."""
        stderr = self.proc.communicate(timeout=300)[1]
        self._watcher.join()
        return stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_cluster_that_loses_nodes_makes_the_local_engines_shards(
    finished_run: Path, kit_overrides: list[str], tmp_path: Path, ray_cluster: Any,
    ray_env: dict[str, str],
) -> None:  # fmt: skip
    """Two worker nodes of a 3-node cluster on this machine, one actor each. The node of
    the first worker seen making a shard lost (and another joining, as an autoscaler would
    start): the stage ends with the local engine's bytes. Every worker node gone: one line
    naming the shards not made, and a rerun (here on this machine) makes only those."""
    from diversynth.stages.generate.ray_engine import node_tag

    ray_cluster.add_node(num_cpus=1)
    ray_cluster.add_node(num_cpus=1)
    ray_cluster.wait_for_nodes()
    port = ray_cluster.address.rpartition(":")[2]
    # a loopback address reaches a head started on this machine
    on_cluster = [*RAY, "--set", f"generate.ray.address=127.0.0.1:{port}"]

    def run_args(out: Path, *extra: str) -> list[str]:
        return ["run", str(OFFLINE_CONFIG), "--out", str(out), "--stages",
                "classes,prompts,generate", *set_args(kit_overrides), *extra]  # fmt: skip

    one = copy_before_generate(finished_run, tmp_path / "one-lost")
    run = _Run(run_args(one, *on_cluster), one, ray_env)
    # the node busy with the first shard: the others (5 in all) are made elsewhere. Losing
    # a node chosen beforehand was not sure to lose work: on a fast machine one worker may
    # make every shard before the other has loaded its models.
    busy = run.wait_for_a_writer()
    (lost,) = [node for node in ray_cluster.worker_nodes if node_tag(node.node_id) == busy]
    ray_cluster.remove_node(lost)
    ray_cluster.add_node(num_cpus=1)
    stderr = run.finish()
    assert run.proc.returncode == 0, stderr[-3000:]
    # the work went on elsewhere: workers on two nodes or more wrote shards
    assert len(run.writers) >= 2, run.writers
    summary = json.loads((one / ".state" / "generate.json").read_text())["summary"]
    # the nodes whose shards reached the driver, of the 3 worker nodes there ever were: the
    # lost node's may not have, and one worker may make all the rest before the restarted
    # one has loaded its models
    assert summary["engine"] == "ray" and 1 <= summary["nodes"] <= 3
    assert_same_shards(one, finished_run)  # the lost worker's temp file removed too
    # one line of ours for the event; Ray's own messages in the run's log, not the console
    (lost_line,) = [line for line in stderr.splitlines() if "lost ray node" in line]
    named = re.search(r"shard\(s\) ([\d, ]+) in progress there|no shard was in progress", lost_line)
    assert named, lost_line  # the shards the lost worker was making, by name
    if named.group(1):
        assert set(named.group(1).split(", ")) <= set(_shard_names(finished_run / "shards"))
    assert "(raylet)" not in stderr and "WARNING" not in stderr, stderr[-3000:]
    assert (one / "logs" / "generate-ray.log").is_file()

    # every worker node gone (the two still up removed) and two shards to make again: one
    # line naming them, and a rerun (here on this machine) makes only those
    for node in list(ray_cluster.worker_nodes):
        ray_cluster.remove_node(node)
    for name in ("000001", "000003"):
        for suffix in ("tar", "json", "rows.parquet"):
            (one / "shards" / f"{name}.{suffix}").unlink()
    stalled = cli(*run_args(one, *on_cluster, "--set", "generate.ray.worker_wait=2"),
                  env=ray_env)  # fmt: skip
    assert stalled.returncode == 1, stalled.stderr[-3000:]
    errors = [line for line in stalled.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no node of the cluster had room for a worker" in errors[0]
    assert "2 shard(s) not made (000001, 000003)" in errors[0]
    result = cli(*run_args(one))  # the local engine: the engine is not in the fingerprint
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((one / ".state" / "generate.json").read_text())["summary"]
    assert summary["shards_generated"] == 2
    assert_same_shards(one, finished_run)


def test_worker_errors_come_back_as_one_plain_line() -> None:
    from ray.exceptions import ActorDiedError, RayTaskError

    from diversynth.stages.generate.ray_engine import RayEngineError, WorkerError, _worker_error

    # what Ray Data hands the driver when a worker's disk is full: the worker's error inside
    # a RayTaskError, with Ray's retry advice appended to the message
    full = WorkerError("No space left on device (/runs/a/shards/000001.tar.1f2e.tmp)\n"
                       "Failed to apply UDF transform after 1/1 attempts.")  # fmt: skip
    error = _worker_error(RayTaskError("submit", "Traceback ...", full).as_instanceof_cause())
    assert isinstance(error, RayEngineError)
    assert str(error) == "No space left on device (/runs/a/shards/000001.tar.1f2e.tmp)"

    # a worker whose models failed to load: only the traceback text survives
    last = "diversynth.models.generator.GeneratorLoadError: generate.model: cannot load 'x'"
    trace = f'Traceback (most recent call last):\n  File "local.py", line 32\n{last}\n'
    died = ActorDiedError(cause=RayTaskError("__init__", trace, ValueError("x")))
    assert str(_worker_error(died)) == f"a ray worker failed to start: {last}"
    bug = RuntimeError("a bug keeps its traceback")
    assert _worker_error(bug) is bug


def test_an_address_where_nothing_listens_is_one_line_with_a_hint() -> None:
    from diversynth.run.ray_cluster import RayJoinError, join

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(RayJoinError) as caught:
        join("generate.ray.address", f"127.0.0.1:{port}", timeout=1.5)
    assert time.monotonic() - start < 5
    line = str(caught.value)
    assert "\n" not in line
    assert line.startswith(
        f"generate.ray.address: nothing answered at 127.0.0.1:{port} within 1.5 s"
    )
    assert "loopback address reaches only a head started on this machine" in line


def test_an_address_that_is_not_one_is_refused_when_the_config_is_read(
    kit_overrides: list[str],
) -> None:
    from diversynth.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"generate.ray.address.*'head:port' is not an address"):
        load_config(OFFLINE_CONFIG, [*kit_overrides, "generate.ray.address=head:port"])


_JOIN_A_SILENT_SERVER = """
import socket, sys, threading
server = socket.create_server(("127.0.0.1", 0))  # accepts, never answers as Ray would
threading.Thread(target=lambda: [server.accept() for _ in range(64)], daemon=True).start()
import ray  # imported before the join starts: the time to import is not the join's
from diversynth.run.ray_cluster import join
print("joining", flush=True)
join("generate.ray.address", f"127.0.0.1:{server.getsockname()[1]}", float(sys.argv[1]))
"""


@pytest.mark.parametrize("how", ["timeout", "sigterm"])
def test_a_join_that_hangs_ends_within_its_time_limit_or_on_sigterm(
    how: str, tmp_path: Path
) -> None:
    """Ray waits for ever on an address that accepts connections but is no Ray head: the
    join ends at its time limit with one line, or within a second of SIGTERM."""
    limit = "3" if how == "timeout" else "120"
    proc = subprocess.Popen([sys.executable, "-c", _JOIN_A_SILENT_SERVER, limit], cwd=REPO,
                            env={**os.environ, "RAY_TMPDIR": str(tmp_path)}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "joining\n"
    start = time.monotonic()
    if how == "sigterm":
        time.sleep(2.0)  # inside ray.init by now
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    took = time.monotonic() - start
    if how == "timeout":
        assert took < 10, took
        assert "answered but Ray did not join within 3 s" in stderr
    else:
        assert took < 3, took
        assert "KeyboardInterrupt: signal 15" in stderr  # the finally blocks ran
    assert proc.returncode != 0

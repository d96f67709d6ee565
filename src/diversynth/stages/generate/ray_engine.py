"""The ray engine: Ray Data spreads the shards of the plan over a pool of actors.

The dataset holds one row per shard still to make (its spec and its prompts). `map_batches`
runs `ShardMaker` actors, each of which loads the pipeline (and CLIP) once, on its own GPU
when the cluster has GPUs, and makes whole shards with the local engine's code, committing
each into the run's shard folder. So a shard's bytes do not depend on the engine or on the
worker that made it, and a killed run loses only the shards in progress.

Rows are shards, not prompts: a shard is the unit of resume and of byte identity, and rows
of prompts would have to be grouped back into the planned shards (a shuffle) before any
worker could start one.

On a cluster, the run directory must be on storage that every node mounts (NFS, a shared
volume), as img2dataset's output folder must.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from diversynth.config import RunConfig
from diversynth.errors import DiversynthError
from diversynth.models.generator import check_model
from diversynth.run.artifacts.records import PromptRecord
from diversynth.run.artifacts.shard_plan import ShardSpec
from diversynth.run.artifacts.shards import is_done, written_by
from diversynth.run.progress import console
from diversynth.run.ray_cluster import join, output_to, stop_on_sigterm

RAY_LOG = "logs/generate-ray.log"  # in the run: what Ray itself prints (its C++ logs too)


class RayEngineError(DiversynthError):
    pass


class WorkerError(DiversynthError):
    """A worker's error that the user can act on (disk full, permissions, bad input), with
    its message made on the worker: Ray Data appends its own lines to what comes back."""


class ShardMaker:
    """A Ray Data actor: loads the models once, then makes the shards it is given."""

    def __init__(self, config: RunConfig, class_names: dict[int, str], folder: str) -> None:
        import ray

        from diversynth.stages.generate.local import LocalEngine

        self.engine = LocalEngine(config, class_names)
        # an actor stays on its node (one restarted elsewhere is constructed again)
        self.node = ray.get_runtime_context().get_node_id()
        self.engine.writer_tag = node_tag(self.node)
        self.folder = Path(folder)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        made: dict[str, list[Any]] = {"shard": [], "count": [], "node": []}
        for spec, prompts, inputs in zip(batch["spec"], batch["prompts"], batch["inputs"],
                                         strict=True):  # fmt: skip
            shard = ShardSpec(**json.loads(spec))
            try:
                stats = self.engine.run_shard(
                    shard, json.loads(prompts), self.folder, inputs=str(inputs)
                )
            except OSError as exc:
                raise WorkerError(f"{exc.strerror or exc} ({exc.filename or self.folder})") from exc
            except DiversynthError as exc:
                raise WorkerError(str(exc)) from exc
            made["shard"].append(shard.name)
            made["count"].append(stats["count"])
            made["node"].append(self.node)
        return made


def _connect(config: RunConfig) -> bool:
    """Join the configured cluster, or start Ray on this machine; True when this call did
    either (and so must shut it down). A Ray already initialised by the caller is used."""
    cfg = config.generating.ray
    here = _this_machine() if cfg.address is None else {}
    # Ray runs its workers at niceness 15 by default: on a machine with other busy processes
    # the generating actors would starve (a shard taking minutes instead of seconds).
    system = {"worker_niceness": 0} if cfg.address is None else None
    return join("generate.ray.address", cfg.address, cfg.connect_timeout,
                num_cpus=here.get("CPU"), num_gpus=here.get("GPU"), _system_config=system,
                configure_logging=True)  # fmt: skip


def _this_machine() -> dict[str, int]:
    """The CPUs (this process may use) and GPUs of a Ray started here."""
    import torch

    return {"CPU": len(os.sched_getaffinity(0)), "GPU": torch.cuda.device_count()}


def check_pool(config: RunConfig) -> None:
    """When the run starts Ray on this machine, a pool that cannot fit is an error now,
    before any work, rather than a wait forever for resources that never come."""
    cfg = config.generating.ray
    if cfg.address is not None:
        return  # a cluster may grow (autoscaling): Ray Data waits for the workers
    have = _this_machine()
    for name, each, key in (("GPU", _gpus_per_worker(config, have["GPU"]), "gpus_per_worker"),
                            ("CPU", cfg.cpus_per_worker, "cpus_per_worker")):  # fmt: skip
        need = cfg.workers * each
        if need > have[name]:
            raise RayEngineError(
                f"generate.ray.workers: {cfg.workers} workers x {each:g} {name} "
                f"(generate.ray.{key}) need {need:g}; this machine has {have[name]:g} {name}s"
            )


def _gpus_per_worker(config: RunConfig, cluster_gpus: float) -> float:
    """The configured share, else one GPU per worker when there are GPUs to use."""
    if config.generating.ray.gpus_per_worker is not None:
        return config.generating.ray.gpus_per_worker
    return 1.0 if cluster_gpus > 0 and config.generating.device != "cpu" else 0.0


def node_tag(node_id: str) -> str:
    """The short form of a Ray node id that its workers' temp files carry."""
    return node_id[:16].lower()


class NoRoomError(Exception):
    pass


class NodeWatch:
    """Says, once per event, when a node of the cluster is lost; raises `NoRoomError` once
    no live node has had room for one worker (`need`) for `wait` seconds: Ray Data would
    wait for ever for a node that may never come."""

    def __init__(self, need: dict[str, float], wait: float, folder: Path) -> None:
        self.need, self.wait, self.folder = need, wait, folder
        self.alive: dict[str, str] = {}  # node id -> its address
        self.no_room_since: float | None = None

    def check(self) -> None:
        import ray

        nodes = [node for node in ray.nodes() if node.get("Alive")]
        now = {node["NodeID"]: node.get("NodeManagerAddress", "?") for node in nodes}
        for node_id, where in self.alive.items():
            if node_id not in now:
                console.print(f"  generate: lost ray node {where} ({node_id[:8]}); "
                              f"{self._in_progress(node_id)}", highlight=False,
                              soft_wrap=True)  # fmt: skip
        self.alive = now
        room = any(
            all(node.get("Resources", {}).get(name, 0) >= each
                for name, each in self.need.items() if each > 0)
            for node in nodes
        )  # fmt: skip
        if room:
            self.no_room_since = None
            return
        since = self.no_room_since = self.no_room_since or time.monotonic()
        if time.monotonic() - since >= self.wait:
            need = ", ".join(f"{each:g} {name}" for name, each in self.need.items())
            raise NoRoomError(f"no node of the cluster had room for a worker ({need}) "
                              f"for {self.wait:g} s (generate.ray.worker_wait)")  # fmt: skip

    def _in_progress(self, node_id: str) -> str:
        names = written_by(self.folder, node_tag(node_id))
        if not names:
            return "no shard was in progress there"
        return f"shard(s) {', '.join(names)} in progress there are made again on the others"


def _rows_while_watching(made: Any, watch: NodeWatch) -> Iterator[dict[str, Any]]:
    """The dataset's rows, read on a helper thread while this one watches the nodes every
    second; SIGTERM and Ctrl-C end the wait at once (the caller shuts Ray down)."""
    found: queue.Queue[tuple[str, Any]] = queue.Queue()

    def pump() -> None:
        try:
            for row in made.iter_rows():
                found.put(("row", row))
            found.put(("end", None))
        except BaseException as exc:  # handed to the watching thread
            found.put(("error", exc))

    threading.Thread(target=pump, name="ray-rows", daemon=True).start()
    watch.check()
    checked = time.monotonic()
    with stop_on_sigterm():
        while True:
            try:
                kind, value = found.get(timeout=1.0)
            except queue.Empty:
                kind, value = "none", None
            if time.monotonic() - checked >= 1.0:  # also while rows keep coming
                watch.check()
                checked = time.monotonic()
            if kind == "none":
                continue
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value


def _worker_error(exc: BaseException) -> BaseException:
    """What to report for an error from the pool: a `WorkerError` as one plain line; for a
    worker that failed to start, the last line of its traceback; anything else as it is."""
    from ray.exceptions import RayActorError, RayError

    seen: BaseException | None = exc
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:  # Ray wraps it, sometimes twice
        visited.add(id(seen))
        if isinstance(seen, WorkerError) and not isinstance(seen, RayError):
            return RayEngineError(str(seen.args[0]).splitlines()[0])
        if isinstance(seen, RayActorError) and getattr(seen, "error_msg", None):
            lines = [line for line in seen.error_msg.splitlines() if line.strip()]
            return RayEngineError(f"a ray worker failed to start: {lines[-1].strip()}")
        seen = getattr(seen, "cause", None) or seen.__cause__ or seen.__context__
    return exc


class RayEngine:
    """Shards on a pool of Ray Data actors, each loading the models once; shards are
    reported as they finish, in any order."""

    def __init__(self, config: RunConfig, class_names: dict[int, str]) -> None:
        # the workers load the models: check what can be checked here first
        check_model(config.generating)
        check_pool(config)
        self.config, self.class_names = config, class_names
        self.workers = config.generating.ray.workers
        self.nodes: set[str] = set()  # Ray node ids

    def make(
        self,
        shards: list[ShardSpec],
        prompts: list[PromptRecord],
        folder: Path,
        inputs: dict[str, str],
        on_images: Callable[[int], None],
    ) -> Iterator[tuple[str, int]]:
        planned = {s.name: s.images for s in shards}
        log = folder.parent / RAY_LOG
        console.print(f"  generate: Ray's own messages go to {log}", highlight=False,
                      soft_wrap=True)  # fmt: skip
        with output_to(log):
            for name, count, node in _make_shards(self.config, shards, prompts,
                                                  self.class_names, folder, inputs):  # fmt: skip
                self.nodes.add(node)
                on_images(planned[name])  # whole shards: workers report nothing finer
                yield name, count


def _make_shards(
    config: RunConfig,
    shards: list[ShardSpec],
    prompts: list[PromptRecord],
    class_names: dict[int, str],
    folder: Path,
    inputs: dict[str, str],
) -> Iterator[tuple[str, int, str]]:
    """The given shards made by the actor pool; (shard name, images written, Ray node id)
    as each is done."""
    import ray
    import ray.data

    cfg = config.generating.ray
    started_here = _connect(config)
    try:
        gpus = _gpus_per_worker(config, ray.cluster_resources().get("GPU", 0))
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the stage shows its own
        context.execution_options.preserve_order = False  # report shards as they finish
        context.raise_original_map_exception = True  # a WorkerError comes back as one
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        rows = [
            {"spec": json.dumps(s.__dict__), "prompts": json.dumps(s.take(prompts)),
             "inputs": inputs[s.name]}
            for s in shards
        ]  # fmt: skip
        made = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            ShardMaker,
            fn_constructor_kwargs={
                "config": config,
                "class_names": class_names,
                "folder": str(folder),
            },
            batch_size=1,
            # one shard at a time per worker: a shard is long work with small inputs, so a
            # second one queued behind a busy worker only waits there while another worker
            # (one still loading its models, say) could take it; img2dataset's workers too
            # take a shard when free
            compute=ray.data.ActorPoolStrategy(
                size=min(cfg.workers, len(rows)), max_tasks_in_flight_per_actor=1
            ),
            num_gpus=gpus,
            num_cpus=cfg.cpus_per_worker,
            # a worker lost with its node starts again elsewhere, and its shard is made again
            ray_remote_args_fn=functools.partial(
                dict, max_restarts=cfg.max_restarts, max_task_retries=cfg.max_restarts
            ),
        )
        watch = NodeWatch({"CPU": cfg.cpus_per_worker, "GPU": gpus}, cfg.worker_wait, folder)
        try:
            for row in _rows_while_watching(made, watch):
                yield str(row["shard"]), int(row["count"]), str(row["node"])
        except NoRoomError as exc:
            missing = [s.name for s in shards if not is_done(folder, s.name)]
            shown = ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
            raise RayEngineError(
                f"generate: {exc}; {len(missing)} shard(s) not made ({shown}): "
                "a rerun makes only those"
            ) from None
        except Exception as exc:
            cause = _worker_error(exc)
            if cause is exc:
                raise
            raise cause from exc
    finally:
        if started_here:
            ray.shutdown()

"""Trials as Ray tasks (`engine: ray`): Ray's scheduler places each on a node with the CPUs
and GPUs it asks for (`cpus_per_trial`, `gpus_per_trial`); the task runs the trial's
command there, as the local engine does here. The sweep folder must be on a file system
every node sees (the pool's shards are read in place)."""

from __future__ import annotations

import os
from typing import Any

from diversynth.commands.sweep.runner import Runner, run_trial_process, thread_env
from diversynth.commands.sweep.spec import SweepFile, Trial
from diversynth.run.progress import console
from diversynth.run.ray_cluster import join, stop_on_sigterm
from diversynth.run.rundir import RunDir


def _task(run_root: str, env: dict[str, str], processes: int) -> tuple[int, str]:
    # the GPUs Ray gave the task are in CUDA_VISIBLE_DEVICES already (Ray sets it)
    return run_trial_process(run_root, env, processes)


def ray_runner(spec: SweepFile) -> Runner:
    def run_all(todo: list[tuple[Trial, RunDir]]) -> dict[str, tuple[int, str]]:
        if not todo:
            return {}
        import ray

        local = spec.ray.address is None
        started = join("ray.address", spec.ray.address, spec.ray.connect_timeout,
                       num_cpus=(os.cpu_count() or 1) if local else None,
                       _system_config={"worker_niceness": 0} if local else None)  # fmt: skip
        try:
            remote = ray.remote(num_cpus=spec.cpus_per_trial,
                                num_gpus=spec.gpus_per_trial if _cluster_gpus(ray) else 0,
                                max_retries=0)(_task)  # fmt: skip
            refs: dict[Any, Trial] = {}
            for trial, run in todo:
                console.print(f"trial {trial.id}: queued on Ray ({trial.label()})",
                              highlight=False, soft_wrap=True)  # fmt: skip
                env = thread_env(spec.cpus_per_trial)
                refs[remote.remote(str(run.root.resolve()), env, spec.processes_per_trial)] = trial
            results: dict[str, tuple[int, str]] = {}
            pending = list(refs)
            with stop_on_sigterm():
                while pending:
                    # short waits: Ctrl-C or SIGTERM is handled between two
                    ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                    if not ready:
                        continue
                    trial = refs[ready[0]]
                    try:
                        results[trial.id] = ray.get(ready[0])
                    except ray.exceptions.RayError as exc:  # the node was lost, say
                        results[trial.id] = (1, f"Ray: {str(exc).splitlines()[0]}")
            return results
        finally:
            if started:
                ray.shutdown()

    return run_all


def _cluster_gpus(ray: Any) -> float:
    return float(ray.cluster_resources().get("GPU", 0))

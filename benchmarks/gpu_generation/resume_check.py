"""--resume-check: the generate stage (generate.stage.run_generate, default mode) on 2
shards, uninterrupted in this process, and in a child's fork killed with SIGKILL in the
middle of its second shard (the hook of diversynth.testing.kill_driver), then resumed by
the child (`generate_gpu.py --resume-child JOB`): the shards' tar and rows files and the
manifest must be the same bytes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from _results import log

from .common import CLASSES, ROOT, round_up, run_config

if TYPE_CHECKING:
    from .study import Study

ENTRY = ROOT / "benchmarks" / "generate_gpu.py"  # runs the child: --resume-child JOB


def run(study: Study) -> dict[str, Any]:
    """Two runs of the generate stage in the default mode: one uninterrupted (here), one
    killed mid-shard and resumed (in a child): the same shard and manifest bytes."""
    from diversynth.run.rundir import RunDir, write_jsonl
    from diversynth.stages.generate.stage import run_generate

    per_shard = round_up(2 * study.args.batch, study.args.batch)  # two batches a shard
    prompts = study.prompts(2 * per_shard)
    # on the CPU the sums depend on the thread count: the same in every process
    threads = torch.get_num_threads() if study.device == "cpu" else None
    config = run_config(study.args, study.model, study.device, images_per_shard=per_shard,
                        cpu_threads=threads)  # fmt: skip
    folder = study.tmp / "resume"
    runs = {name: RunDir(folder / name) for name in ("whole", "killed")}
    for run_dir in runs.values():
        run_dir.root.mkdir(parents=True)
        write_jsonl(run_dir.classes, [{"index": i, "name": n} for i, n in enumerate(CLASSES)])
        write_jsonl(run_dir.prompts, [{**p, "seed": p["image_seeds"][0]} for p in prompts])
    start = time.perf_counter()
    run_generate(config, runs["whole"], "resume-check")
    seconds = {"whole": round(time.perf_counter() - start, 2)}
    job, report = folder / "job.json", folder / "child.json"
    spec = {"config": config.model_dump(mode="json"), "run": str(runs["killed"].root),
            "report": str(report)}  # fmt: skip
    job.write_text(json.dumps(spec))
    start = time.perf_counter()
    # NVML answers "is CUDA there?" before the fork: no CUDA driver in use when forking
    env = {**os.environ, "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}
    child = subprocess.run([sys.executable, str(ENTRY), "--resume-child", str(job)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           cwd=ROOT, env=env)  # fmt: skip
    seconds["killed_and_resumed"] = round(time.perf_counter() - start, 2)
    files = [f"shards/{s:06d}.{e}" for s in (0, 1) for e in ("tar", "rows.parquet")]
    files.append("manifest.parquet")
    different = [f for f in files if not (runs["killed"].root / f).is_file()
                 or (runs["killed"].root / f).read_bytes()
                 != (runs["whole"].root / f).read_bytes()]  # fmt: skip
    result: dict[str, Any] = {
        "identical": child.returncode == 0 and not different,
        "killed_mid_shard": False,
        "compared": files,
        "different": different,
        "shards": 2,
        "images_per_shard": per_shard,
        "settings": "the generate defaults: no compile, fused QKV, channels_last or "
                    "compiled VAE; sdpa_kernel auto",
        "seconds": seconds,
    }  # fmt: skip
    if child.returncode == 0:
        result |= json.loads(report.read_text())
    if not (result["identical"] and result["killed_mid_shard"]):
        result["child_output"] = child.stdout[-3000:]
    log(f"resume check: identical {result['identical']}, killed mid-shard "
        f"{result['killed_mid_shard']}, {different or 'no'} files differ")  # fmt: skip
    return result


def resume_child(job: Path) -> None:
    """--resume-check's child: the generate stage on a run in a fork killed with SIGKILL
    once the first image of its second shard is written (the hook of
    diversynth.testing.kill_driver), then resumed here. As kill_driver does, it forks
    before any torch operation (after one import of what both need), which is safe; the
    report goes to the job's file."""
    from diversynth.config import RunConfig
    from diversynth.models.pipeline_traits import text_to_image_classes
    from diversynth.run.artifacts.shards import is_done
    from diversynth.run.rundir import RunDir
    from diversynth.stages.generate.stage import run_generate
    from diversynth.testing.kill_driver import die_in_second_shard

    spec = json.loads(job.read_text())
    config, run = RunConfig.model_validate(spec["config"]), RunDir(spec["run"])
    text_to_image_classes()  # every pipeline module, imported once for both processes
    # a CUDA context made before the fork (an import that asks the device's capability, say)
    # cannot be used in the child: say so rather than leave the child's failure silent
    cuda_before_fork = torch.cuda.is_initialized()
    pid = os.fork()
    if pid == 0:  # killed by its own hand, or exits 3 with its traceback printed
        try:
            die_in_second_shard()
            run_generate(config, run, "resume-check")
        except BaseException:  # noqa: BLE001 - the child's only way to tell why it was not killed
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    shards = run.shards
    mid = (is_done(shards, "000000") and not is_done(shards, "000001")
           and any(shards.glob("000001.tar.*.tmp")))  # fmt: skip
    summary = run_generate(config, run, "resume-check")
    Path(spec["report"]).write_text(json.dumps({
        "killed_mid_shard": killed and mid, "shards_remade_on_resume": summary["shards_generated"],
        "cuda_initialised_before_fork": cuda_before_fork,
    }))  # fmt: skip

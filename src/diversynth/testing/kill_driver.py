"""Helper process for tests/test_architectures.py (`python -m diversynth.testing.kill_driver
JOBS`): the generate stage of many runs, each killed with SIGKILL in the middle of its
second shard, for the cost of one import.

For each job (JSON list in the file named by argv[1]: the config file, its overrides, the
run to kill, the run to finish), a forked child runs the generate stage on the run to
kill and sends itself SIGKILL once the first image of shard 000001 is in its temp file: no
handler, no cleanup, as a killed `diversynth run`. Children are forked before this process
has run any torch operation (a fork after torch's thread pools start is not safe); then it
runs each job's other run to the end, uninterrupted, as the reference.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from diversynth.config import load_config
from diversynth.pipeline import run_stages
from diversynth.run.artifacts import shards
from diversynth.run.rundir import RunDir


def die_in_second_shard() -> None:
    original = shards.ShardWriter.write

    def write(self: shards.ShardWriter, key: str, jpeg: bytes, meta: dict[str, Any]) -> None:
        original(self, key, jpeg, meta)
        if self.tar_path.stem == "000001":
            os.kill(os.getpid(), signal.SIGKILL)

    # the point: every writer of this process dies once it writes into the second shard
    shards.ShardWriter.write = write  # type: ignore[method-assign]


def main() -> int:
    jobs = json.loads(Path(sys.argv[1]).read_text())
    # what every child imports, imported once here (imports start no torch threads)
    import diversynth.stages.generate.local  # noqa: F401  torch, diffusers, transformers, open_clip
    from diversynth.models.pipeline_traits import text_to_image_classes

    text_to_image_classes()  # every pipeline module AutoPipelineForText2Image knows
    for job in jobs:
        config = load_config(Path(job["config"]), job["settings"])
        pid = os.fork()
        if pid == 0:  # the child: killed by its own hand, or exits 3
            try:
                die_in_second_shard()
                run_stages(config, RunDir(Path(job["killed"])), stages=["generate"])
            finally:
                os._exit(3)
        _, status = os.waitpid(pid, 0)
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            print(f"{job['killed']}: not killed (status {status})", file=sys.stderr)
            return 1
    for job in jobs:
        run_stages(load_config(Path(job["config"]), job["settings"]), RunDir(Path(job["whole"])),
                   stages=["generate"])  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

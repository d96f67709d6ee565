"""`diversynth generate --status --run DIR`: how far generation is, from the files alone.

Reads only `shards/plan.json` and the stats files of finished shards, so it works while
a generate process (or several, on a cluster) is writing, and costs nothing to ask.
"""

from __future__ import annotations

import json
from typing import Any

from diversynth.errors import DiversynthError
from diversynth.run.artifacts.shard_plan import ShardSpec
from diversynth.run.artifacts.shards import is_done, read_stats
from diversynth.run.rundir import DAMAGED_HINT, RunDir


class StatusError(DiversynthError, ValueError):
    pass


def generation_status(run: RunDir) -> dict[str, Any]:
    shard_folder = run.shards
    if not run.plan.is_file():
        raise StatusError(f"--run: no shards/plan.json in {str(run.root)!r} "
                          "(the generate stage has not started there)")  # fmt: skip
    try:
        plan = [ShardSpec(**s) for s in json.loads(run.plan.read_text())["shards"]]
    except (ValueError, KeyError, TypeError):
        raise StatusError(f"{run.plan}: not a readable plan: the file is damaged; "
                          + DAMAGED_HINT) from None  # fmt: skip
    done = [s for s in plan if is_done(shard_folder, s.name)]
    images_done, seconds = 0, 0.0
    for shard in done:  # one stats file in memory at a time (each holds its shard's rows)
        stats = read_stats(shard_folder, shard.name)
        images_done += stats["count"]
        seconds += stats.get("seconds", 0.0)
    images_total = sum(s.images for s in plan)
    rate = images_done / seconds if seconds > 0 else None  # images/s of one generating process
    remaining = images_total - images_done
    eta = 0 if not remaining else (round(remaining / rate) if rate else None)
    return {
        "shards_done": len(done),
        "shards_total": len(plan),
        "images_done": images_done,
        "images_total": images_total,
        "images_per_second": round(rate, 3) if rate else None,
        "eta_seconds": eta,
    }


def format_status(status: dict[str, Any]) -> str:
    def duration(seconds: int | None) -> str:
        if seconds is None:
            return "unknown (no shard finished yet)"
        hours, rest = divmod(int(seconds), 3600)
        return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s"

    rate = status["images_per_second"]
    return (
        f"shards {status['shards_done']} of {status['shards_total']} done; "
        f"images {status['images_done']} of {status['images_total']}; "
        f"rate {rate if rate is not None else '-'} images/s per process; "
        f"ETA {duration(status['eta_seconds'])} for one process"
    )

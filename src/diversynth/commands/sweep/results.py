"""results.parquet: one row per combination and evaluation set, read from the trials'
own records (eval.json and the train stage's summary), so it can be made again at any
time from the sweep folder."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from diversynth.run.rundir import atomic_open

if TYPE_CHECKING:
    from diversynth.commands.sweep.folder import SweepDir
    from diversynth.commands.sweep.spec import Sweep

METRICS = ("top1", "top5", "mean_class_top1", "many_top1", "medium_top1", "few_top1")


def cell(value: Any) -> Any:
    """An axis value as a table cell: lists (train.strategies) as 'naive+cd+sd'."""
    if isinstance(value, list):
        return "+".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def _set_metrics(row: dict[str, Any]) -> dict[str, Any]:
    top5 = next((v for k, v in row.items() if k.startswith("top") and k != "top1"), None)
    groups = row.get("groups") or {}
    return {
        "images": row.get("images"),
        "top1": row.get("top1"),
        "top5": top5,
        "mean_class_top1": row.get("mean_class_top1"),
        **{f"{g}_top1": (groups.get(g) or {}).get("top1") for g in ("many", "medium", "few")},
    }


def trial_rows(sweep: Sweep, folder: SweepDir) -> list[dict[str, Any]]:
    from diversynth.commands.sweep.folder import trial_state

    rows = []
    for number, trial in enumerate(sweep.trials, start=1):
        run = folder.trial(trial)
        state = trial_state(run)
        train = run.read_state("train")
        summary = train.summary if train else {}
        base = {
            "trial": number,
            "training": trial.id,
            "pool": trial.pool,
            **{key: cell(value) for key, value in trial.values.items()},
            "state": state,
            "real_images_seen": summary.get("real_images"),
            "synthetic_images_seen": summary.get("synthetic_images"),
            "synthetic_used": summary.get("synthetic_available"),
            "train_seconds": train.seconds if train else None,
        }
        evaluation = json.loads(run.eval.read_text()) if run.eval.is_file() else None
        sets = (evaluation or {}).get("sets") or {"": {}}
        for name, result in sets.items():
            rows.append({**base, "set": name or None, **_set_metrics(result)})
    return rows


def write_results(sweep: Sweep, folder: SweepDir) -> pa.Table:
    rows = trial_rows(sweep, folder)
    table = pa.Table.from_pylist(rows)
    with atomic_open(folder.results, "wb") as handle:
        pq.write_table(table, handle)
    return table

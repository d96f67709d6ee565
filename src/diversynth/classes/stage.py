"""The `classes` stage: the class list -> classes.jsonl (one record per class)."""

from __future__ import annotations

from typing import Any

from diversynth.classes.catalog import load_class_list
from diversynth.config import RunConfig
from diversynth.rundir import RunDir, read_jsonl, write_jsonl


def run_classes(config: RunConfig, run: RunDir) -> dict[str, Any]:
    entries = load_class_list(config.classes.names, config.classes.file)
    records = [
        {
            "index": entry.index,
            "wnid": entry.wnid,
            "raw_name": entry.raw_name,
            "description": entry.description,
            "name": entry.raw_name,
            "candidates": [{"text": entry.raw_name, "score": None, "source": "raw"}],
            "reason": "names used as given",
        }
        for entry in entries
    ]
    write_jsonl(run.classes, records)
    return {"classes": len(records), "mode": "as-given"}


def read_classes(run: RunDir) -> list[dict[str, Any]]:
    return read_jsonl(run.classes)

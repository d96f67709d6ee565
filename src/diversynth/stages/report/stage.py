"""The `report` stage of the pipeline: the run's site in RUN/report/ (see site.py)."""

from __future__ import annotations

from typing import Any

from diversynth.config import RunConfig
from diversynth.run.rundir import RunDir
from diversynth.stages.report.facts import load_run
from diversynth.stages.report.site import build_run_site


def run_report(config: RunConfig, run: RunDir) -> dict[str, Any]:
    summary = build_run_site(load_run(run.root), run.report_dir, config.report)
    summary["page"] = "report/index.html"
    return summary

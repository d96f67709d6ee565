"""The report stage: a static HTML site of the run (classes, prompts, images, metrics)."""

from __future__ import annotations

from diversynth.stages.declaration import Stage
from diversynth.stages.report.facts import NEEDS, READS
from diversynth.stages.report.stage import run_report

STAGE = Stage(
    "report",
    version=2,
    run=run_report,
    sections=("report", "name"),
    needs=NEEDS,
    # `diversynth report` rewrites the site outside the pipeline: not damage
    recorded=lambda r: [],
    reads=READS,
    outputs=lambda r: [r.report_dir / "index.html"],
)

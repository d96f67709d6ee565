"""What the leaks stage found (leaks.json), as the stages after it read it."""

from __future__ import annotations

import json

from diversynth.errors import DiversynthError
from diversynth.run.rundir import RunDir


class LeakError(DiversynthError):
    pass


def leaked_keys(run: RunDir) -> set[str]:
    """The synthetic images the leaks stage found too close to an evaluation image."""

    try:
        data = json.loads(run.leaks.read_text())
    except (OSError, ValueError):
        raise LeakError("train.exclude_leaks: no readable leaks.json in the run: run the "
                        "leaks stage first (add it to --stages)") from None  # fmt: skip
    if not data.get("checked"):
        raise LeakError(f"train.exclude_leaks: the leaks stage checked nothing "
                        f"({data.get('reason', 'unknown reason')})")  # fmt: skip
    return set(data["leaked_keys"])

"""A sweep's folder: its pools and trials, its lock, and each trial's state as its own
records tell it (what the runner and the results table both read)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from diversynth.commands.sweep.spec import Trial
from diversynth.data.userfiles import first_entries
from diversynth.errors import UsageError
from diversynth.pipeline import POOL_STAGES, TRIAL_STAGES
from diversynth.run.lock import LockWords, hold
from diversynth.run.rundir import RunDir

SWEEP_RECORD = "sweep.json"


class SweepFolderError(UsageError):
    pass


@dataclass(frozen=True)
class SweepDir:
    root: Path

    record = property(lambda self: self.root / SWEEP_RECORD)
    results = property(lambda self: self.root / "results.parquet")
    report = property(lambda self: self.root / "report")

    def pool(self, pool_id: str) -> RunDir:
        return RunDir(self.root / "pools" / pool_id)

    def trial(self, trial: Trial) -> RunDir:
        return RunDir(self.root / "trials" / trial.id, pool=self.pool(trial.pool),
                      pooled=POOL_STAGES)  # fmt: skip

    def claim(self) -> None:
        """The folder must be new, empty or a sweep folder: a sweep writes pools, trials
        and a report into it, and a user's files there are not ours to mix with."""
        if self.root.exists() and not self.root.is_dir():
            raise SweepFolderError(f"--out: {str(self.root)!r} is a file, not a folder")
        if self.root.is_dir() and not self.record.is_file():
            listed = first_entries(self.root)
            if listed:
                raise SweepFolderError(
                    f"--out: {str(self.root)!r} holds files that are not a diversynth sweep "
                    f"({listed}); give a new or empty folder, or the folder of this sweep"
                )
        self.root.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def lock(self, break_lock: bool = False) -> Iterator[None]:
        """One sweep process at a time in a folder, from this host or another sharing it
        (run_lock: the flock, dropped by the OS if the process dies, and a leased record)."""
        with hold(self.root, _SWEEP_LOCK, break_lock):
            yield


_SWEEP_LOCK = LockWords(busy="--out: another diversynth sweep is working in {folder}",
                        error=SweepFolderError)  # fmt: skip


def trial_state(run: RunDir) -> str:
    """done, failed, started or pending (from the trial's own records)."""
    if all((run.state_dir / f"{stage}.json").is_file() for stage in TRIAL_STAGES):
        return "done"
    if (run.state_dir / FAILED_RECORD).is_file():
        return "failed"
    return "started" if run.train_dir.is_dir() else "pending"


FAILED_RECORD = "failed.json"  # in a trial's .state: the last attempt's error line

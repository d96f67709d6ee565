"""Rich progress bars with count, rate and ETA, and the console every stage prints to."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from rich.console import Console
from rich.errors import MarkupError
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class _Console(Console):
    """The console, which never fails on text of the user's: a class or run name such as
    `[/oops]` is not markup rich can render, so such a line is printed as it stands."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        try:
            super().print(*objects, **kwargs)
        except MarkupError:
            super().print(*objects, **{**kwargs, "markup": False})


console = _Console(stderr=True)
# Output to a file or a pipe (nohup, Slurm) has no width; rich's 80 columns would cut the
# tables (the evaluation table has nine columns): a log is read in an editor, not a terminal.
if not console.is_terminal and "COLUMNS" not in os.environ:
    console.width = 200


class RateColumn(TextColumn):
    """Items per second, with the unit of the task (images/s, batches/s)."""

    def __init__(self) -> None:
        super().__init__("")

    # a str, where TextColumn's render returns a Text: rich renders any renderable a column
    # returns, and a str gets the console's highlighting (the number in colour)
    def render(self, task: Task) -> str:  # type: ignore[override]
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        return f"{speed:,.1f} {unit}/s" if speed else f"- {unit}/s"


class Advance(Protocol):
    """A counting bar's callback: advance by `done`, and add `more` to the total."""

    def __call__(self, done: int, more: int = 0) -> None: ...


@contextmanager
def counting(description: str, total: int, unit: str) -> Iterator[Advance]:
    """A bar over `total` items for the block; the callback `(n, more)` advances it by n
    and adds `more` to its total (items asked again)."""
    with progress_bar() as bar:
        task = bar.add_task(description, total=total, unit=unit)
        size = total

        def step(done: int, more: int = 0) -> None:
            nonlocal size
            if more:
                size += more
                bar.update(task, total=size)
            bar.advance(task, done)

        yield step


class _Bars(Progress):
    """Progress bars that also speak to a console that is not a terminal (output piped to
    a file, nohup, a Slurm log), where rich draws a bar only once it ends: a plain line a
    task every `every` seconds, so a long stage is never silent."""

    def __init__(self, *columns: Any, every: float, **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs)
        self.every = every
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def start(self) -> None:
        super().start()
        if not self.disable and not self.console.is_terminal and self.every > 0:
            self._stop.clear()
            self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._ticker.start()

    def stop(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        super().stop()

    def _tick(self) -> None:
        while not self._stop.wait(self.every):
            for task in self.tasks:
                if not task.finished:
                    self.console.print(progress_line(task), highlight=False, markup=False)


def progress_line(task: Any) -> str:
    """`description: done/total (percent), rate, ETA` for a log."""
    done = f"{task.completed:,.0f}"
    if task.total:
        done += f"/{task.total:,.0f} ({100 * task.completed / task.total:.0f}%)"
    unit = task.fields.get("unit", "it")
    speed = task.speed
    line = f"{task.description}: {done} {unit}"
    if speed:
        line += f", {speed:,.1f} {unit}/s"
    if task.time_remaining is not None:
        line += f", ETA {clock(task.time_remaining)}"
    return line


def clock(seconds: float) -> str:
    """A time span as H:MM:SS, or M:SS under an hour (as rich's time columns show it)."""
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{rest:02d}" if hours else f"{minutes}:{rest:02d}"


def _progress_seconds() -> float:
    """Seconds between the progress lines written where the output is not a terminal
    (DIVERSYNTH_PROGRESS_SECONDS; 0 or less: none; not a number: the default, 60)."""
    try:
        return float(os.environ.get("DIVERSYNTH_PROGRESS_SECONDS", "60"))
    except ValueError:
        return 60.0


PROGRESS_SECONDS = _progress_seconds()


def progress_bar(disable: bool = False, every: float | None = None) -> Progress:
    return _Bars(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=disable,
        every=PROGRESS_SECONDS if every is None else every,
    )

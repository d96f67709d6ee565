"""Rich progress bars with count, rate and ETA, and the console every stage prints to."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.errors import MarkupError
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
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


class RateColumn(TextColumn):
    """Items per second, with the unit of the task (images/s, batches/s)."""

    def __init__(self) -> None:
        super().__init__("")

    def render(self, task):  # type: ignore[override]
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "it")
        return f"{speed:,.1f} {unit}/s" if speed else f"- {unit}/s"


@contextmanager
def counting(description: str, total: int, unit: str) -> Iterator[Callable[[int, int], None]]:
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


def progress_bar(disable: bool = False) -> Progress:
    return Progress(
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
    )

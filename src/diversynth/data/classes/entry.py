"""One class of a class list, as every source (catalog, names, file, folder) gives it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from diversynth.errors import UsageError

if TYPE_CHECKING:
    from diversynth.run.artifacts.records import ClassIdentity


class ClassListError(UsageError, ValueError):
    pass


@dataclass(frozen=True)
class ClassEntry:
    index: int
    raw_name: str
    wnid: str | None = None
    description: str | None = None
    lemmas: tuple[str, ...] = ()  # WordNet lemmas, when the class has a wnid
    hypernyms: tuple[str, ...] = ()  # WordNet hypernym chain, nearest first
    curated: str | None = None  # a curated unambiguous name, when the catalog has one

    def identity(self) -> ClassIdentity:
        """What matches the class to a data folder or a list line (records.ClassIdentity)."""
        return {"index": self.index, "raw_name": self.raw_name, "wnid": self.wnid}

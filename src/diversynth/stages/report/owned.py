"""Which files of a report folder a build may remove: those a build wrote.

A site folder holds a marker, `.diversynth-report`, listing every file the last build left
there. A build removes a stale page, thumbnail or picture only when that list (or the
build itself) proves the file is the report's: a file of the user's that sits in the folder
(a note beside the pages, a folder a report was forced into) is never removed, whatever
its name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from diversynth.data.userfiles import first_entries
from diversynth.errors import UsageError
from diversynth.run.rundir import write_json

MARKER = ".diversynth-report"


class SiteFolderError(UsageError):
    pass


def _files(site: Path) -> set[str]:
    """Every file under `site`, relative, links not followed."""
    found: set[str] = set()
    for folder, dirs, files in os.walk(site):
        base = Path(folder).relative_to(site)
        found.update((base / name).as_posix() for name in files)
        dirs[:] = [d for d in dirs if not (Path(folder) / d).is_symlink()]
    found.discard(MARKER)
    return found


def _recorded(site: Path) -> set[str]:
    """The files the last build listed (none for a folder without a readable marker)."""
    try:
        data = json.loads((site / MARKER).read_text())
        return {str(name) for name in data["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def claim_site(site: Path, what: str, force: bool = False) -> None:
    """Accept `site` for a report: new, empty, or holding the marker, unless `force`."""
    if site.exists() and not site.is_dir():
        raise SiteFolderError(f"{what}: {str(site)!r} is a file, not a folder")
    if site.is_dir() and not (site / MARKER).is_file() and not force:
        listed = first_entries(site)
        if listed:
            raise SiteFolderError(
                f"{what}: {str(site)!r} holds files that are not a diversynth report "
                f"({listed}); give a new or empty folder, or --force to write the report "
                "into it (files of the same names are replaced, no other is removed)"
            )


class SiteFiles:
    """One build's view of a site folder: what it may remove, and the list it leaves."""

    def __init__(self, site: Path) -> None:
        self.site = site
        site.mkdir(parents=True, exist_ok=True)
        # files there now that no build listed: the user's, never removed
        self.foreign = _files(site) - _recorded(site)
        if not (site / MARKER).is_file():  # marked before any page is written
            self.save()

    def owns(self, path: Path) -> bool:
        return path.relative_to(self.site).as_posix() not in self.foreign

    def remove(self, path: Path) -> None:
        """Remove a file the report wrote (a file of the user's stays)."""
        if path.is_file() and not path.is_symlink() and self.owns(path):
            path.unlink()

    def remove_tree(self, folder: Path) -> None:
        """Remove the report's files under `folder`, then the folders left empty."""
        if not folder.is_dir() or folder.is_symlink():
            return
        for parent, dirs, files in os.walk(folder, topdown=False):
            for name in files:
                self.remove(Path(parent) / name)
            for name in dirs:
                path = Path(parent) / name
                if not path.is_symlink() and not any(path.iterdir()):
                    path.rmdir()
        if not any(folder.iterdir()):
            folder.rmdir()

    def save(self) -> None:
        """List what the report left in the folder (the user's files are not listed)."""
        write_json(self.site / MARKER, {"files": sorted(_files(self.site) - self.foreign)})

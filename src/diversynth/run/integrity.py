"""Is each output of a finished stage still what the stage wrote?

A finished stage records each output's size, mtime and (where cheap) sha256 in its state.
Before a stage is skipped as up to date, its outputs are compared by size and mtime; a
file whose mtime alone changed (a copy that did not keep times) is hashed and compared,
so only real changes count. `diversynth verify` hashes everything and parses every file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diversynth.run.rundir import RunDir, StageState, read_jsonl, sha256_file

# Shard tars are the bulk of a run; their sha256 is in their stats files already.
UNHASHED_SUFFIXES = (".tar",)

# (run, path relative to the run) -> the sha256 the stage recorded for it elsewhere
ExpectedSha = Callable[[RunDir, str], str | None]


@dataclass(frozen=True)
class Damage:
    path: str  # relative to the run directory
    why: str

    def __str__(self) -> str:
        return f"{self.path} ({self.why})"


def record_files(run: RunDir, paths: list[Path]) -> dict[str, list[Any]]:
    """[size, mtime_ns, sha256 or None] of each existing output, by relative path."""
    records = {}
    for path in paths:
        if not path.is_file():
            continue
        stat = path.stat()
        sha = None if path.suffix in UNHASHED_SUFFIXES else sha256_file(path)
        records[str(path.relative_to(run.root))] = [stat.st_size, stat.st_mtime_ns, sha]
    return records


def _gone_or_resized(run: RunDir, rel: str, size: int) -> Damage | None:
    path = run.root / rel
    if not path.is_file():
        return Damage(rel, "missing")
    now = path.stat().st_size
    return Damage(rel, f"{size} bytes when written, {now} now") if now != size else None


def _content_changed(run: RunDir, rel: str, sha: str | None,
                     expected_sha: ExpectedSha | None) -> Damage | None:  # fmt: skip
    """Hashed against the recorded sha256 (or the one the stage keeps elsewhere); with
    nothing to compare with, the same size is taken as the same file."""
    if sha is None and expected_sha is not None:
        sha = expected_sha(run, rel)
    if sha is None or sha256_file(run.root / rel) == sha:
        return None
    return Damage(rel, "its content changed since it was written")


def quick_check(run: RunDir, state: StageState,
                expected_sha: ExpectedSha | None = None) -> tuple[list[Damage], bool]:  # fmt: skip
    """The recorded outputs that are missing or changed, and whether any file only got a
    new mtime (its content checked equal: the state should record the new one)."""
    damaged, touched = [], False
    for rel, (size, mtime, sha) in state.files.items():
        damage = _gone_or_resized(run, rel, size)
        if damage is None and (run.root / rel).stat().st_mtime_ns != mtime:
            damage = _content_changed(run, rel, sha, expected_sha)
            touched = touched or damage is None
        if damage is not None:
            damaged.append(damage)
    return damaged, touched


def refresh_times(run: RunDir, state: StageState) -> StageState:
    """The state with the current mtimes of its files (content already checked equal)."""
    files = {}
    for rel, (size, _, sha) in state.files.items():
        path = run.root / rel
        files[rel] = [size, path.stat().st_mtime_ns if path.is_file() else 0, sha]
    return StageState(**{**state.__dict__, "files": files})


def _parse_problem(path: Path) -> str | None:
    """Why a file does not parse as its kind, or None."""
    try:
        if path.suffix == ".jsonl":
            read_jsonl(path)  # names the line that is not whole JSON
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq

            pq.read_table(path)
        elif path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                list(handle.keys())
        elif path.suffix == ".tar":
            import tarfile

            with tarfile.open(path) as tar:
                tar.getmembers()
    except Exception as exc:  # noqa: BLE001 - any failure to parse is the finding
        return f"unreadable: {type(exc).__name__}: {str(exc)[:120]}"
    return None


def full_check(run: RunDir, state: StageState,
               expected_sha: ExpectedSha | None = None) -> list[Damage]:  # fmt: skip
    """Every recorded output hashed against its record and parsed as its kind."""
    damaged = []
    for rel, (size, _, sha) in state.files.items():
        damage = _gone_or_resized(run, rel, size) or _content_changed(run, rel, sha, expected_sha)
        if damage is None and (problem := _parse_problem(run.root / rel)):
            damage = Damage(rel, problem)
        if damage is not None:
            damaged.append(damage)
    return damaged

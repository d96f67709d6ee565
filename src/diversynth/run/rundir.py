"""The run directory: the unit of work and of resumption.

Every artifact is written to a temporary name in the same folder and renamed into place,
so a crash at any moment leaves either the old file or the new one, never half of one.
Each finished stage leaves `.state/STAGE.json` with the fingerprint of its inputs and a
digest of its outputs; later stages fingerprint those digests, not the upstream config,
so a stage that reruns and produces the same bytes does not invalidate the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import IO, Any

from diversynth.data.userfiles import first_entries, folder_problem
from diversynth.errors import DiversynthError, UsageError
from diversynth.run.lock import LOCK_FILE, LockWords, hold


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only; finished files get the usual mode.
_FILE_MODE = 0o666 & ~_read_umask()


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside `path`; on success fsync and rename it to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, _FILE_MODE)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    with atomic_open(path) as handle:
        handle.write(text)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> int:
    """One JSON object a line (dicts, or the typed records of records.py)."""
    count = 0
    with atomic_open(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


class RunFileError(DiversynthError):
    """A file of a run that cannot be read as what it should be (cut or changed)."""


DAMAGED_HINT = (
    "`diversynth verify --run RUN` lists damaged files; "
    "`diversynth run RUN/config.yaml --out RUN` remakes them"
)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    with path.open() as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError as exc:
                raise RunFileError(
                    f"{path}: line {number} is not whole JSON ({exc}): the file is damaged; "
                    + DAMAGED_HINT
                ) from None
    return records


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def digest_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def path_signature(path: Path) -> list[tuple[str, int, int]]:
    """Cheap identity of a file or folder tree: relative names, sizes and mtimes.

    Hashing a multi-GB model or dataset on every run would cost more than the stages it
    guards; size and mtime change whenever a file is replaced.
    """
    path = Path(path)
    if path.is_file():
        stat = path.stat()
        return [(path.name, stat.st_size, stat.st_mtime_ns)]
    rows = []
    for child in sorted(path.rglob("*")):
        if child.is_file():
            stat = child.stat()
            rows.append((str(child.relative_to(path)), stat.st_size, stat.st_mtime_ns))
    return rows


@dataclass(frozen=True)
class StageState:
    stage: str
    fingerprint: str
    output_digest: str
    finished_at: float
    seconds: float
    summary: dict[str, Any]
    made_with: dict[str, Any] = field(default_factory=dict)  # python and library versions
    # the outputs as written, by path relative to the run: [size, mtime_ns, sha256 or None]
    files: dict[str, list[Any]] = field(default_factory=dict)


def _inside(rel: object) -> bool:
    """Whether a recorded path stays inside the run: relative, no `..`."""
    if not isinstance(rel, str) or not rel:
        return False
    path = PurePosixPath(rel)
    return not path.is_absolute() and ".." not in path.parts and "\\" not in rel


# .state/run: written when a folder becomes a run directory (RunDir.claim)
RUN_MARKER = "run"
# The stages of runs made before the marker existed: a finished one left .state/NAME.json
_STAGES_BEFORE_MARKER = ("classes", "prompts", "generate", "leaks", "train", "evaluate", "report")
# Files of the shard folder that are not shards
PLAN_FILE, INFO_FILE = "plan.json", "_info.json"
# The record (.state/pool.json) that points a sweep's trial at its pool run and names the
# stages whose outputs and records lie there
POOL_RECORD = "pool.json"
# what a pool record from before it named its stages stands for
_POOL_STAGES_BEFORE_LISTED = ("classes", "prompts", "generate", "leaks")


class RunDirError(UsageError):
    pass


class RunBusyError(DiversynthError):
    """Another process holds the run's lock."""


_RUN_LOCK = LockWords(
    busy="another diversynth process is working in {folder}",
    error=RunBusyError,
    take_over="take it over with `diversynth run ... --break-lock`",
)


class RunDir:
    """Paths of one run's artifacts, and the per-stage state records."""

    def __init__(self, root: str | Path, pool: RunDir | None = None,
                 pooled: Iterable[str] = ()) -> None:  # fmt: skip
        self.root = Path(root)
        # a trial of a sweep reads the `pooled` stages' outputs and records from another run
        # (`pool`, or the one its .state/pool.json names) and writes only its own stages'
        self._pool: RunDir | None | bool = pool if pool is not None else False
        self._pooled = frozenset(pooled)

    @property
    def pool(self) -> RunDir | None:
        """The run whose classes, prompts, images and leaks this one trains on, when it is
        a sweep's trial; None for a run that makes its own."""
        if self._pool is False:
            record = self.state_dir / POOL_RECORD
            if not record.is_file():
                self._pool = None
            else:  # a damaged record raises on every call, not just the first
                try:
                    found = json.loads(record.read_text())
                    rel = found["path"]
                    stages = found.get("stages", _POOL_STAGES_BEFORE_LISTED)
                    if not (isinstance(rel, str) and isinstance(stages, list | tuple)
                            and all(isinstance(s, str) for s in stages)):  # fmt: skip
                        raise TypeError
                except (ValueError, KeyError, TypeError, AttributeError):
                    raise RunFileError(f"{record}: not a pool record; " + DAMAGED_HINT) from None
                self._pool = RunDir(os.path.normpath(self.root / rel))
                self._pooled = frozenset(stages)
        assert self._pool is not True
        return self._pool or None

    def use_pool(self, pool: RunDir, stages: Iterable[str]) -> None:
        """Record that this run reads `stages`' outputs from `pool` (a path relative to
        this run, so a sweep folder can be moved whole)."""
        rel = os.path.relpath(pool.root.resolve(), self.root.resolve())
        pooled = frozenset(stages)
        write_json(self.state_dir / POOL_RECORD, {"path": rel, "stages": sorted(pooled)})
        self._pool, self._pooled = pool, pooled

    def home(self, stage: str) -> RunDir:
        """The run that holds `stage`'s outputs and record: the pool for a trial's pooled
        stages, else this one."""
        pool = self.pool
        return pool if pool is not None and stage in self._pooled else self

    @property
    def _made(self) -> RunDir:
        """Where the pool stages' outputs lie."""
        return self.pool or self

    def is_run(self) -> bool:
        """Whether the folder is a run directory diversynth made: its `.state/run` marker
        (written when the folder became one), or, in a run from before the marker, a
        finished stage's record. An empty `.state/` or `.lock` proves nothing: anyone can
        make one."""
        if (self.state_dir / RUN_MARKER).is_file():
            return True
        return any(self.state_path(stage).is_file() for stage in _STAGES_BEFORE_MARKER)

    def claim(self) -> None:
        """Make the folder a run directory: it must be new, empty, or a run directory
        already. A folder holding anything else (the user's own config, say) is refused:
        a run writes config.yaml, prompts.jsonl and more into its folder."""
        if self.root.is_symlink() and not self.root.exists():
            raise RunDirError(f"--out: {str(self.root)!r} is a symbolic link to "
                              f"{os.readlink(self.root)!r}, which does not exist")  # fmt: skip
        if self.root.exists() and not self.root.is_dir():
            raise RunDirError(f"--out: {str(self.root)!r} is a file, not a folder")
        problem = folder_problem(self.root)
        if problem:
            raise RunDirError(f"--out: cannot make {str(self.root)!r}: {problem}")
        if self.root.is_dir() and not self.is_run():
            shown = first_entries(self.root)
            if shown:
                raise RunDirError(
                    f"--out: {str(self.root)!r} holds files that are not a diversynth run "
                    f"({shown}); give a new or empty folder, or an existing run directory"
                )
        self.check_confined()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not (self.state_dir / RUN_MARKER).is_file():
            write_text(self.state_dir / RUN_MARKER, "a diversynth run directory\n")

    def check_confined(self) -> None:
        """Refuse a run whose folders lead out of it: a link such as RUN/shards -> /data
        would have the run write, and remove its leftovers, in a folder of the user's."""
        escape = self.outside_link()
        if escape is not None:
            link, target = escape
            rel = link.relative_to(self.root)
            where = (f"a symbolic link to {str(target)!r}, outside the run directory"
                     if target is not None else "one of a loop of symbolic links")  # fmt: skip
            raise RunDirError(
                f"--out: {str(link)!r} is {where}: diversynth writes and removes files only "
                "inside the run. Put the whole run on that disk (--out a folder there), or "
                f"remove the link {str(rel)!r}"
            )

    def outside_link(self) -> tuple[Path, Path | None] | None:
        """The first link inside the run that leads out of it, and its target (None for a
        loop of links), if any.
        Links to files are followed by nothing that writes (files are replaced whole, not
        written through), but one is refused all the same: a train/metrics.jsonl link would
        be appended to."""
        if not self.root.is_dir():
            return None
        root = self.root.resolve()
        folders = [self.root]
        while folders:  # scandir's entries know whether they are links: no stat each
            with os.scandir(folders.pop()) as entries:
                for entry in entries:
                    if entry.is_symlink():
                        try:
                            target = Path(entry.path).resolve()
                        except (RuntimeError, OSError):  # a loop of links leads nowhere
                            return Path(entry.path), None
                        if not target.is_relative_to(root):
                            return Path(entry.path), target
                    elif entry.is_dir():
                        folders.append(Path(entry.path))
        return None

    # artifacts (the layout docs/run-directory.md shows)
    config = property(lambda self: self.root / "config.yaml")
    # the pool stages' outputs (a trial's are its pool's)
    classes = property(lambda self: self._made.root / "classes.jsonl")
    prompts = property(lambda self: self._made.root / "prompts.jsonl")
    shards = property(lambda self: self._made.root / "shards")
    plan = property(lambda self: self.shards / PLAN_FILE)  # the shards and their inputs
    shard_info = property(lambda self: self.shards / INFO_FILE)  # timm's split description
    manifest = property(lambda self: self._made.root / "manifest.parquet")
    leaks = property(lambda self: self._made.root / "leaks.json")
    leak_thumbs = property(lambda self: self._made.root / "leaks")  # closest pairs' images
    train_dir = property(lambda self: self.root / "train")
    checkpoint = property(lambda self: self.root / "train" / "model.safetensors")
    train_metrics = property(lambda self: self.root / "train" / "metrics.jsonl")
    eval = property(lambda self: self.root / "eval.json")
    report_dir = property(lambda self: self.root / "report")
    llm_cache = property(lambda self: self.root / ".cache" / "llm.sqlite")
    state_dir = property(lambda self: self.root / ".state")

    @contextlib.contextmanager
    def lock(self, break_lock: bool = False, shared: bool = False) -> Iterator[None]:
        """One process at a time works in a run directory (the pipeline, a report build),
        from this host or another sharing the folder (run_lock: an flock, and a record
        with a lease for the hosts the flock does not reach). `break_lock` takes over
        another host's record before its lease lapses. `shared`: for a process that only
        reads the run (a report written elsewhere); readers share it, a writer waits for
        them. A run on a read-only disk or archive is locked through a read-only handle of
        its lock file, or, with no lock file at all, not locked: no process can change it
        there."""
        path = self.root / LOCK_FILE
        if path.is_symlink() or (path.exists() and not path.is_file()):  # a FIFO would block
            raise RunDirError(f"{str(path)!r} is not a regular file (diversynth makes it as "
                              "one): remove it")  # fmt: skip
        with hold(self.root, _RUN_LOCK, break_lock, shared=shared):
            yield

    def state_path(self, stage: str) -> Path:
        return self.state_dir / f"{stage}.json"

    def read_state(self, stage: str) -> StageState | None:
        if (home := self.home(stage)) is not self:
            return home.read_state(stage)
        path = self.state_path(stage)
        if not path.is_file():
            return None
        try:
            state = StageState(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            return None  # unreadable state is the same as no state: the stage reruns
        if not isinstance(state.files, dict):
            return None
        # a record naming a path out of the run (an edited or foreign .state) is no proof
        # that the run wrote that file: left out, so nothing is checked or removed there
        inside = {rel: entry for rel, entry in state.files.items() if _inside(rel)}
        return state if len(inside) == len(state.files) else replace(state, files=inside)

    def write_state(self, state: StageState) -> None:
        write_json(self.state_path(state.stage), state.__dict__)

    def clear_state(self, stage: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.state_path(stage).unlink()


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

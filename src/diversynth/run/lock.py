"""One process at a time in a folder (a run directory, a sweep folder), whether the
processes share one host or several hosts share the folder over a network file system.

Two guards. An flock on FOLDER/.lock: the OS drops it when its process dies, but many
network file systems do not carry it from one host to another. And a record,
FOLDER/.lock.json, naming the holder (host, pid, command, start) with a lease that the
holder renews while it works and removes when it ends. A process killed on this host
leaves a record whose flock is free: the next process takes it over at once. A host that
crashes leaves a record whose lease lapses: after that any host takes it over, saying
so; before, `--break-lock` does.

A process that only reads the folder (a report written elsewhere) may share it with other
readers: it takes the flock shared and writes no record, so a writer waits for the readers
of its host, and a reader is refused while a writer of any host holds the folder. A reader
of another host, where the file system carries no flocks, is not seen by a writer.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import shlex
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import IO

from rich.markup import escape

from diversynth.errors import DiversynthError, UsageError, shown
from diversynth.run.progress import console

LOCK_FILE = ".lock"
RECORD_FILE = ".lock.json"
# A holder that stops renewing (its host down or cut off from the file system) keeps the
# lock this long after its last renewal; renewing six times a lease lets a slow file
# server miss a few renewals.
LEASE_S = 180.0
RENEW_S = 30.0
LEASE_ENV = "DIVERSYNTH_LOCK_LEASE_S"  # another lease (renewals keep the same ratio)
TAKE_TRIES = 5  # processes racing for one lapsed record: each loser looks again
COMMAND_CHARS = 500

_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)
_NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_read_umask()  # the record is read by processes of other users too


@dataclass(frozen=True)
class Holder:
    """Who holds a folder's lock, as its record says."""

    host: str
    pid: int
    command: str
    started: float  # seconds since the epoch
    expires: float  # the lease's end unless renewed before
    token: str  # tells this hold from an earlier one of the same host and pid

    @classmethod
    def me(cls, lease_s: float) -> Holder:
        now = time.time()
        command = shlex.join(sys.argv)[:COMMAND_CHARS]
        return cls(socket.gethostname(), os.getpid(), command, now, now + lease_s,
                   uuid.uuid4().hex)  # fmt: skip

    @classmethod
    def parse(cls, raw: bytes) -> Holder | None:
        """The holder a record names; None for a file that is not one."""
        try:
            data = json.loads(raw)
            holder = cls(**{f.name: data[f.name] for f in fields(cls)})
        except (ValueError, KeyError, TypeError):
            return None
        texts = (holder.host, holder.command, holder.token)
        times = (holder.started, holder.expires)
        if not all(isinstance(text, str) for text in texts) or type(holder.pid) is not int:
            return None
        if not all(isinstance(t, int | float) and math.isfinite(t) for t in times):
            return None
        return holder

    def local(self) -> bool:
        return self.host == socket.gethostname()

    def alive(self) -> bool:
        """Whether its process runs, when it is of this host."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's
            return True
        except (OverflowError, ValueError):
            return False
        return True

    def named(self) -> str:
        return f"pid {self.pid} on {self.host}, since {_when(self.started)}"


@dataclass(frozen=True)
class LockWords:
    """What a refusal says, for the kind of folder at hand."""

    busy: str  # with {folder}: "another diversynth process is working in {folder}"
    error: Callable[[str], DiversynthError]
    take_over: str | None = None  # how to take over a lock whose host is down now


def lease_seconds() -> float:
    value = os.environ.get(LEASE_ENV)
    if value is None:
        return LEASE_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise UsageError(f"{LEASE_ENV}={shown(value)}: give the lock's lease in seconds, "
                         "a number above 0")  # fmt: skip
    return seconds


@contextlib.contextmanager
def hold(folder: Path, words: LockWords, break_lock: bool = False,
         lease_s: float | None = None, shared: bool = False) -> Iterator[None]:  # fmt: skip
    """Hold `folder`'s lock for the block, or raise `words.error`. `break_lock` takes over
    a record of another host whatever its lease (never a flock held by a live process).
    `shared`: for a process that only reads the folder; other readers may hold it too. A
    folder on a read-only disk or archive is locked through a read-only handle of its
    lock file, with no record; with no lock file there, not locked: no process can
    change it."""
    lease_s = lease_s or lease_seconds()
    record = folder / RECORD_FILE
    handle = _open(folder / LOCK_FILE)
    if handle is None:
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            # held by a live process (of another host too, where the file system carries
            # flocks): nothing to take over. A writer finds no record of readers.
            raise words.error(_busy(words, folder, _live_holder(record), lapses=False)) from None
        if shared:
            # refused while a writer of another host holds the record (one of this host
            # would hold the flock); a reader takes nothing over: a record left by a
            # process that ended stays for the next writer
            _judge(_read(record)[1], folder, words, break_lock=False)
            yield
            return
        lease = None
        if handle.writable():
            me = Holder.me(lease_s)
            if _take(record, me, folder, words, break_lock):
                lease = _Lease(record, me, lease_s, folder)
        try:
            yield
        finally:
            if lease is not None:
                lease.release()


def _open(path: Path) -> IO[str] | None:
    try:
        return path.open("a")
    except OSError as exc:
        if exc.errno not in _READ_ONLY:
            raise
    if not path.is_file():
        return None
    return path.open("r")  # flock takes a read-only descriptor too


def _take(record: Path, me: Holder, folder: Path, words: LockWords, break_lock: bool) -> bool:
    """Make `me` the record, taking over one whose holder is gone (or, with `break_lock`,
    another host's); False in a folder that takes no record (not writable: the flock alone
    guards it, as before records)."""
    for _ in range(TAKE_TRIES):
        try:
            if _create(record, me):
                return True
        except OSError as exc:
            if exc.errno in _READ_ONLY:
                return False
            raise
        raw, held = _read(record)
        if raw is None:
            continue  # removed meanwhile
        note = _judge(held, folder, words, break_lock)
        if _remove(record, raw) and note:
            _say(note)
    raise words.error(_busy(words, folder, _read(record)[1]))


def _judge(held: Holder | None, folder: Path, words: LockWords, break_lock: bool) -> str | None:
    """Whether a record found beside a free flock may be taken over (raises if not), and
    the line that says why when it is worth saying."""
    if held is None:
        return f"{folder / RECORD_FILE} was no lock record: replaced"
    if held.local():
        return None  # its flock is free: its process ended (the pid may be another's now)
    if break_lock:
        return f"took over {folder} from {held.named()} (--break-lock)"
    if held.expires <= time.time():
        return (f"took over {folder} from {held.named()}: its lease lapsed at "
                f"{_when(held.expires)} unrenewed (that process or its host is gone)")  # fmt: skip
    raise words.error(_busy(words, folder, held))


def _busy(words: LockWords, folder: Path, held: Holder | None, lapses: bool = True) -> str:
    """The refusal; `lapses`: the holder's record is all that keeps the lock (its flock is
    free), so it lapses if that host is down."""
    line = words.busy.format(folder=folder)
    if held is not None:
        line += f" ({held.named()})"
    line += "; wait for it to finish"
    if lapses and held is not None and not held.local():
        line += (f", or, if {held.host} is down, for its lease to lapse (at "
                 f"{_when(held.expires)} unless renewed)")  # fmt: skip
        if words.take_over:
            line += f" or {words.take_over}"
    return line


def _live_holder(record: Path) -> Holder | None:
    """The record's holder, unless it is of this host and its process ended (the record of
    a killed process; a process of diversynth before records holds the flock now)."""
    with contextlib.suppress(OSError):
        held = _read(record)[1]
        if held is not None and (not held.local() or held.alive()):
            return held
    return None


def _read(record: Path) -> tuple[bytes | None, Holder | None]:
    """The record's bytes (None: no record) and the holder they name."""
    try:
        raw = record.read_bytes()
    except FileNotFoundError:
        return None, None
    return raw, Holder.parse(raw)


def _write_temp(record: Path, holder: Holder) -> str:
    fd, tmp = tempfile.mkstemp(dir=record.parent, prefix=f"{record.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _MODE)
        with os.fdopen(fd, "w") as handle:
            json.dump(asdict(holder), handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def _create(record: Path, holder: Holder) -> bool:
    """Write the record whole unless one exists: False if one does."""
    tmp = _write_temp(record, holder)
    try:
        return _place(tmp, record)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _place(source: str | Path, target: Path) -> bool:
    """Give `source`'s file the name `target` unless `target` exists; a hard link, which
    network file systems make atomically, so two hosts cannot both succeed."""
    try:
        os.link(source, target)
    except FileExistsError:
        return os.stat(source).st_nlink > 1  # NFS: a link made, its reply lost and resent
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if target.exists():  # no hard links on this file system: a narrow race stays open
            return False
        os.replace(source, target)
    return True


def _remove(record: Path, raw: bytes) -> bool:
    """Remove the record if it still holds `raw`: moved aside first, so that of processes
    taking over one record at once, one removes it and the others a record written since
    (which they put back)."""
    aside = record.with_name(f"{record.name}.{uuid.uuid4().hex}.old")
    try:
        os.rename(record, aside)
    except FileNotFoundError:
        return False
    try:
        if aside.read_bytes() == raw:
            return True
        _place(aside, record)  # another process's new record: its own again
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            aside.unlink()


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(seconds))


def _say(line: str) -> None:
    console.print(f"[yellow]lock[/yellow]: {escape(line)}", highlight=False, soft_wrap=True)


class _Lease:
    """This process's record, renewed by a daemon thread until released."""

    def __init__(self, record: Path, holder: Holder, lease_s: float, folder: Path) -> None:
        self.record, self.holder, self.lease_s, self.folder = record, holder, lease_s, folder
        self._stop = threading.Event()
        self._mutex = threading.Lock()  # a renewal is never half done when released
        self._thread = threading.Thread(target=self._renew_all, daemon=True,
                                        name=f"diversynth lock lease {folder}")  # fmt: skip
        self._thread.start()

    def _renew_all(self) -> None:
        every = self.lease_s * RENEW_S / LEASE_S
        while not self._stop.wait(every):
            with self._mutex:
                if self._stop.is_set():
                    return
                try:
                    if not self._renew():
                        return
                except OSError:
                    pass  # the file server's hiccup: the lease has room for missed renewals

    def _renew(self) -> bool:
        held = _read(self.record)[1]
        if held is None or held.token != self.holder.token:
            by = f"by {held.named()}" if held is not None else "(its record was removed)"
            _say(f"this process's lock of {self.folder} was taken over {by}: two processes "
                 "writing one folder damage it; stop one of them")  # fmt: skip
            return False
        self.holder = replace(self.holder, expires=time.time() + self.lease_s)
        tmp = _write_temp(self.record, self.holder)
        try:
            os.replace(tmp, self.record)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return True

    def release(self) -> None:
        self._stop.set()
        if os.getpid() != self.holder.pid:
            return  # a forked child: the record is its parent's
        with self._mutex, contextlib.suppress(OSError):
            held = _read(self.record)[1]
            if held is not None and held.token == self.holder.token:
                self.record.unlink()

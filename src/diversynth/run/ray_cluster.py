"""Joining a Ray cluster, or starting Ray here, within a time limit and stoppable.

`ray.init` on an address where nothing answers waits for ever in Ray's C++ client, with
the main thread blocked so that neither Ctrl-C nor SIGTERM stops it; and Ray replaces a
loopback host by this machine's address before it dials. So the address is first dialled
with a plain TCP connect (a clear line when nothing listens there), then `ray.init` runs
on a helper thread while the main thread waits in short slices: a signal is handled at
once, and the wait ends after `timeout` seconds with one line.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diversynth.errors import DiversynthError

RAY_CLIENT_PORT = 10001  # `ray://host` without a port
GCS_PORT = 6379  # `host` without a port (ray start --head's default)


class RayJoinError(DiversynthError):
    pass


def dial_target(address: str) -> tuple[str, int] | None:
    """The host and TCP port an address reaches, or None for "auto" (found by Ray from
    this machine's own records) and "local"."""
    if address in ("auto", "local"):
        return None
    default = RAY_CLIENT_PORT if address.startswith("ray://") else GCS_PORT
    parts = urllib.parse.urlsplit("//" + address.removeprefix("ray://"))
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.hostname or port == -1 or parts.path or parts.query:
        # a ValueError: config validators call this
        raise ValueError(f"{address!r} is not an address: host:port, ray://host:port or auto")
    return parts.hostname, port or default


def checked_address(address: str | None) -> str | None:
    """A config validator: the address as it is, or a ValueError saying it is none."""
    if address is not None:
        dial_target(address)
    return address


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _dial(setting: str, address: str, host: str, port: int, timeout: float) -> None:
    """Return once something accepts TCP connections at host:port; else one line."""
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, timeout)):
                return
        except socket.gaierror as exc:
            raise RayJoinError(f"{setting}: cannot resolve host {host!r} of {address!r} "
                               f"({exc.strerror})") from None  # fmt: skip
        except OSError as exc:
            last = exc
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    hint = (
        "; a loopback address reaches only a head started on this machine (`ray start "
        "--head` prints the address to use)"
        if _loopback(host)
        else "; check that the head is up (`ray status` on it) and that this machine can "
        "reach the port"
    )
    reason = getattr(last, "strerror", None) or last or "no answer"
    raise RayJoinError(
        f"{setting}: nothing answered at {host}:{port} within {timeout:g} s ({reason}){hint}"
    )


def join(setting: str, address: str | None, timeout: float, **init: Any) -> bool:
    """`ray.init` at `address` (None: a new Ray on this machine), with `init`'s keywords;
    True when this call started or joined Ray (the caller shuts it down), False when the
    caller had Ray running already. Ends within `timeout` seconds, or with one line."""
    # a Ray call after `ray.shutdown` (a reader thread still winding down) must not start
    # or join a Ray again: read by Ray when it is imported
    os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
    import ray

    if ray.is_initialized():
        return False
    init = {"include_dashboard": False, "log_to_driver": False,
            "logging_level": logging.WARNING, **init}  # fmt: skip
    if address is None:
        # a Ray of its own: on this thread, which must outlive it (Ray's processes are tied
        # to the thread that starts them: started from a helper thread, the driver loses
        # its GCS a minute later); starting one here cannot hang on an address
        ray.init(address="local", **init)
        return True
    if (target := dial_target(address)) is not None:
        _dial(setting, address, *target, timeout)
    # Ray says, from the joining thread, that it set no SIGTERM handler: stop_on_sigterm does
    logging.getLogger("ray._private.worker").addFilter(_no_sigterm_notice)
    outcome: dict[str, BaseException | None] = {}

    def init_ray() -> None:
        try:
            ray.init(address=address, **init)
            outcome["error"] = None
        except BaseException as exc:  # handed to the waiting thread
            outcome["error"] = exc

    helper = threading.Thread(target=init_ray, name="ray-join", daemon=True)
    deadline = time.monotonic() + timeout
    with stop_on_sigterm():
        helper.start()
        while helper.is_alive() and time.monotonic() < deadline:
            helper.join(0.2)  # short slices: a signal is handled between two
    if "error" not in outcome:
        raise RayJoinError(f"{setting}: {address} answered but Ray "
                           f"did not join within {timeout:g} s")  # fmt: skip
    error = outcome["error"]
    if isinstance(error, ConnectionError | ValueError | RuntimeError):
        raise RayJoinError(f"{setting}: cannot join {address!r}: {error}") from error
    if error is not None:
        raise error
    return True


def _no_sigterm_notice(record: logging.LogRecord) -> bool:
    return "SIGTERM handler is not set" not in record.getMessage()


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM ends the main thread's wait as Ctrl-C does (KeyboardInterrupt), so that the
    `finally` blocks run: Ray is shut down and what was committed stays committed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def output_to(log: Path) -> Iterator[None]:
    """What this process writes to stdout and stderr goes to `log` (Ray's warnings, its
    C++ logs, the raylet's task messages and the crash dumps of lost workers), while the
    project's console keeps writing to the terminal's stderr."""
    from diversynth.run.progress import console

    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    terminal = os.fdopen(os.dup(saved[2]), "w", buffering=1)
    with log.open("ab") as sink:
        for fd in saved:
            os.dup2(sink.fileno(), fd)
    before = console.file
    console.file = terminal
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, kept in saved.items():
            os.dup2(kept, fd)
            os.close(kept)
        console.file = before
        terminal.close()

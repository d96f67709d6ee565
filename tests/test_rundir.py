"""Atomic writes: a failure while writing leaves the old file whole and no temp file.
The run's lock: one process at a time, from this host or another sharing the folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import OFFLINE_CONFIG, invoke, one_line

from diversynth.errors import UsageError
from diversynth.run.lock import LEASE_ENV, RECORD_FILE, LockWords, _remove, hold
from diversynth.run.rundir import RunBusyError, RunDir, atomic_open, write_text

_WORDS = LockWords(busy="another process is working in {folder}", error=RunBusyError)


def test_failed_write_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "classes.jsonl"
    write_text(target, "old\n")
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write("half of the new")
        raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["classes.jsonl"]


# --------------------------------------------------------------------------- the run's lock


def _record(root: Path, host: str = "node-b", pid: int = 4242, lease: float = 600.0) -> Path:
    """A lock record as another process writes it; `lease`: seconds from now to its end."""
    now = time.time()
    record = root / RECORD_FILE
    root.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"host": host, "pid": pid, "command": "diversynth run x",
                                  "started": now - 60, "expires": now + lease,
                                  "token": "theirs"}))  # fmt: skip
    return record


def _holder(root: Path) -> dict[str, object]:
    return json.loads((root / RECORD_FILE).read_text())


def _holding(root: Path, shared: bool = False) -> subprocess.Popen[str]:
    """A process of this host that holds the run's lock (`shared`: as a reader) until its
    stdin closes."""
    code = (
        "import sys\nfrom diversynth.run.rundir import RunDir\n"
        "with RunDir(sys.argv[1]).lock(shared=sys.argv[2] == 'shared'):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    argv = [sys.executable, "-c", code, str(root), "shared" if shared else "alone"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_a_live_lease_of_another_host_is_refused(tmp_path: Path) -> None:
    record = _record(tmp_path)
    before = record.read_bytes()
    with pytest.raises(RunBusyError) as caught, RunDir(tmp_path).lock():
        pass
    line = str(caught.value)
    assert "\n" not in line
    assert f"another diversynth process is working in {tmp_path} (pid 4242 on node-b" in line
    assert "if node-b is down" in line and "--break-lock" in line
    assert record.read_bytes() == before


def test_a_lapsed_lease_of_another_host_is_taken_over_with_a_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _record(tmp_path, lease=-5)
    with RunDir(tmp_path).lock():
        mine = _holder(tmp_path)
        assert (mine["host"], mine["pid"]) == (socket.gethostname(), os.getpid())
    said = capsys.readouterr().err
    assert "took over" in said and "pid 4242 on node-b" in said and "lease lapsed" in said
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # the record removed


def test_break_lock_takes_over_a_live_lease_of_another_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diversynth import pipeline

    run = tmp_path / "run"
    RunDir(run).claim()
    args = ["run", str(OFFLINE_CONFIG), "--out", str(run), "--stages", "classes"]
    seen: list[dict[str, object]] = []
    monkeypatch.setattr(pipeline, "preflight", lambda *args: None)
    monkeypatch.setattr(pipeline, "_run_locked", lambda *args: seen.append(_holder(run)) or {})
    _record(run)
    line = one_line(1, *args)
    assert "pid 4242 on node-b" in line and "--break-lock" in line and not seen
    code, errors, output = invoke(*args, "--break-lock")
    assert code == 0 and not errors, output
    assert "took over" in output and "pid 4242 on node-b" in output and "--break-lock" in output
    assert [(s["host"], s["pid"]) for s in seen] == [(socket.gethostname(), os.getpid())]
    assert not (run / RECORD_FILE).exists()


def test_a_live_holder_on_this_host_is_refused_even_with_break_lock(tmp_path: Path) -> None:
    proc = _holding(tmp_path)
    try:
        assert _holder(tmp_path)["pid"] == proc.pid
        with pytest.raises(RunBusyError) as caught, RunDir(tmp_path).lock(break_lock=True):
            pass
        assert f"(pid {proc.pid} on {socket.gethostname()}, since" in str(caught.value)
        assert "--break-lock" not in str(caught.value)  # nothing to break: it is alive
    finally:
        _release(proc)
    assert not (tmp_path / RECORD_FILE).exists()  # removed as it ended


def test_a_killed_holder_of_this_host_is_taken_over_quietly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proc = _holding(tmp_path)
    proc.kill()
    proc.wait(timeout=10)
    assert _holder(tmp_path)["pid"] == proc.pid  # left behind
    with RunDir(tmp_path).lock():
        assert _holder(tmp_path)["pid"] == os.getpid()
    assert capsys.readouterr().err == ""
    assert not (tmp_path / RECORD_FILE).exists()


def test_the_lease_is_renewed_while_held(tmp_path: Path) -> None:
    with hold(tmp_path, _WORDS, lease_s=0.3):
        first = _holder(tmp_path)
        deadline = time.monotonic() + 2
        while _holder(tmp_path)["expires"] == first["expires"]:
            assert time.monotonic() < deadline, "the lease was not renewed"
            time.sleep(0.02)
        renewed = _holder(tmp_path)
        assert renewed["expires"] > first["expires"]  # type: ignore[operator]
        assert {k: v for k, v in renewed.items() if k != "expires"} == {
            k: v for k, v in first.items() if k != "expires"
        }
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


def test_the_lease_can_be_set_by_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LEASE_ENV, "42")
    with RunDir(tmp_path).lock():
        mine = _holder(tmp_path)
        assert mine["expires"] == pytest.approx(mine["started"] + 42)  # type: ignore[operator]
    monkeypatch.setenv(LEASE_ENV, "soon")
    with pytest.raises(UsageError, match=LEASE_ENV), RunDir(tmp_path).lock():
        pass


def test_a_damaged_record_is_replaced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / RECORD_FILE).write_text("{half")
    with RunDir(tmp_path).lock():
        assert _holder(tmp_path)["pid"] == os.getpid()
    assert "was no lock record" in capsys.readouterr().err


def test_a_record_written_meanwhile_is_not_removed(tmp_path: Path) -> None:
    """Of processes taking over one lapsed record at once, the later ones must not remove
    the record the first one wrote."""
    record = _record(tmp_path, lease=-5)
    judged = record.read_bytes()
    _record(tmp_path, host="node-c")  # another process took it over since
    now = record.read_bytes()
    assert not _remove(record, judged)
    assert record.read_bytes() == now
    assert sorted(p.name for p in tmp_path.iterdir()) == [RECORD_FILE]


def test_a_sweep_folder_says_its_own_words(tmp_path: Path) -> None:
    from diversynth.commands.sweep.folder import SweepDir, SweepFolderError

    _record(tmp_path)
    with pytest.raises(SweepFolderError) as caught, SweepDir(tmp_path).lock():
        pass
    line = str(caught.value)
    assert line.startswith(f"--out: another diversynth sweep is working in {tmp_path} (pid 4242")
    assert "if node-b is down" in line


def test_a_holder_whose_record_is_taken_over_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with hold(tmp_path, _WORDS, lease_s=0.3):
        _record(tmp_path, host="node-c")  # --break-lock on node-c, say
        deadline = time.monotonic() + 2
        while "taken over" not in (said := capsys.readouterr().err):
            assert time.monotonic() < deadline, "the holder did not notice"
            time.sleep(0.02)
    assert "pid 4242 on node-c" in said
    assert _holder(tmp_path)["host"] == "node-c"  # not its record to remove


def _release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(timeout=10) == 0


def test_readers_share_a_run_and_a_writer_waits_for_them(tmp_path: Path) -> None:
    """Two reports of one run written elsewhere at once both run; the pipeline is refused
    while they read, and takes the run once they are done."""
    reader = _holding(tmp_path, shared=True)
    try:
        assert not (tmp_path / RECORD_FILE).exists()  # a reader leaves no record
        with RunDir(tmp_path).lock(shared=True):
            pass
        with pytest.raises(RunBusyError, match="another diversynth process is working"):
            with RunDir(tmp_path).lock():
                pass
    finally:
        _release(reader)
    with RunDir(tmp_path).lock():
        assert _holder(tmp_path)["pid"] == os.getpid()


def test_a_reader_is_refused_while_a_writer_of_any_host_holds_the_run(tmp_path: Path) -> None:
    writer = _holding(tmp_path)
    try:
        with pytest.raises(RunBusyError) as caught, RunDir(tmp_path).lock(shared=True):
            pass
        assert f"(pid {writer.pid} on {socket.gethostname()}" in str(caught.value)
    finally:
        _release(writer)
    record = _record(tmp_path)  # a writer of another host: only its record is seen here
    with pytest.raises(RunBusyError, match="pid 4242 on node-b"):
        with RunDir(tmp_path).lock(shared=True):
            pass
    _record(tmp_path, lease=-5)  # its lease lapsed: the host is gone
    with RunDir(tmp_path).lock(shared=True):
        assert record.is_file()  # left for the next writer to take over, saying so

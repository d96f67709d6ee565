"""Atomic writes: a failure while writing leaves the old file whole and no temp file."""

from __future__ import annotations

from pathlib import Path

import pytest

from diversynth.rundir import atomic_open, write_text


def test_failed_write_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "classes.jsonl"
    write_text(target, "old\n")
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write("half of the new")
        raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["classes.jsonl"]

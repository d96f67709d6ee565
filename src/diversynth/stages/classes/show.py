"""`diversynth classes show`: one class's decision, candidate by candidate."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from diversynth.errors import UsageError, shown
from diversynth.run.artifacts.records import ClassRecord, read_classes
from diversynth.run.rundir import RunDir


def find_class(run: RunDir, key: str) -> ClassRecord:
    """The record for a class index, a wnid, or a raw name (case-insensitive)."""
    records = read_classes(run)
    if key.isdigit():
        found = [r for r in records if r["index"] == int(key)]
    else:
        found = [r for r in records if r.get("wnid") == key]
        found = found or [r for r in records if r["raw_name"].casefold() == key.casefold()]
    if not found:
        raise UsageError(f"no class {shown(key)} in {run.classes} (give an index, wnid or name)")
    if len(found) > 1:
        which = ", ".join(f"{r['index']} ({r.get('wnid') or r['name']})" for r in found)
        raise UsageError(f"{shown(key)} names {len(found)} classes: {which}; give an index")
    return found[0]


def render_class(record: ClassRecord) -> None:
    console = Console()  # stdout: this is the command's answer, not progress
    out = console.print
    out(f"class {record['index']}  wnid {record.get('wnid') or '-'}", markup=False)
    out(f"raw name: {record['raw_name']}", markup=False)
    out(f"chosen:   {record['name']}", markup=False)
    if record.get("description"):
        out(f"meaning:  {record['description']}", markup=False)
    if record.get("hypernyms"):
        out(f"kind of:  {' < '.join(record['hypernyms'])}", markup=False)
    table = Table("", "candidate", "source", "score", "facts")
    for cand in sorted(record["candidates"], key=lambda c: -(c["score"] or 0)):
        facts = ", ".join(
            f"{k} {v}" for k, v in cand.items() if k not in ("text", "source", "score")
        )
        score = "" if cand["score"] is None else f"{cand['score']:.3f}"
        mark = "*" if cand["text"] == record["name"] else ""
        table.add_row(mark, cand["text"], cand["source"], score, facts)
    console.print(table, markup=False)
    out(f"why: {record['reason']}", markup=False, soft_wrap=True)

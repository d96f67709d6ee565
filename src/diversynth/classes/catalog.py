"""Class lists: inline in the config or a file (.txt, .csv, .json, .yaml)."""

from __future__ import annotations

import csv
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import yaml

from diversynth.errors import DiversynthError


class ClassListError(DiversynthError, ValueError):
    pass


@dataclass(frozen=True)
class ClassEntry:
    index: int
    raw_name: str
    wnid: str | None = None
    description: str | None = None


def _clean(name: object, where: str) -> str:
    if not isinstance(name, str):
        raise ClassListError(f"{where}: class name must be text, got {name!r}")
    text = unicodedata.normalize("NFC", " ".join(name.split()))
    if not text:
        raise ClassListError(f"{where}: class name is empty")
    if any(unicodedata.category(ch).startswith("C") for ch in text):
        raise ClassListError(f"{where}: class name has control characters: {name!r}")
    return text


def _from_items(items: list[object], where: str) -> list[ClassEntry]:
    entries = []
    for i, item in enumerate(items):
        description = None
        if isinstance(item, dict):
            unknown = set(item) - {"name", "description", "wnid"}
            if unknown or "name" not in item:
                raise ClassListError(
                    f"{where}[{i}]: expected keys name, description, wnid; got {sorted(item)}"
                )
            description, wnid, item = item.get("description"), item.get("wnid"), item["name"]
        else:
            wnid = None
        entries.append(ClassEntry(i, _clean(item, f"{where}[{i}]"), wnid, description))
    if not entries:
        raise ClassListError(f"{where}: the class list is empty")
    return entries


def _read_file(path: Path) -> list[object]:
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix == ".txt":
        return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if suffix == ".csv":
        rows = [row for row in csv.reader(text.splitlines()) if row and row[0].strip()]
        if rows and rows[0][0].strip().lower() == "name":
            rows = rows[1:]
        return [{"name": r[0], "description": r[1]} if len(r) > 1 else r[0] for r in rows]
    if suffix in (".json", ".yaml", ".yml"):
        data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
        if isinstance(data, dict) and "classes" in data:
            data = data["classes"]
        if not isinstance(data, list):
            raise ClassListError(f"classes.file: {path} must hold a list of classes")
        return data
    raise ClassListError(f"classes.file: unsupported extension {suffix!r} (.txt .csv .json .yaml)")


def load_class_list(names: list[str] | None, file: Path | None) -> list[ClassEntry]:
    if file is not None:
        return _from_items(_read_file(file), "classes.file")
    return _from_items(list(names or []), "classes.names")

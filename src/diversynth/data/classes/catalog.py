"""Class lists: a built-in catalog, inline names, a file (.txt, .csv, .json, .yaml), or the
class folders of an ImageFolder dataset. Names are text only: nothing here makes a path."""

from __future__ import annotations

import csv
import json
import os
import unicodedata
from pathlib import Path
from typing import Any

from diversynth.config import MAX_CLASSES
from diversynth.config.bounded_yaml import load_yaml
from diversynth.data.classes.entry import ClassEntry, ClassListError
from diversynth.data.classes.imagenet import imagenet_catalog, wordnet_entry
from diversynth.data.classes.wordnet import WNID
from diversynth.data.userfiles import CLASS_LIST_BYTES, YAML_BYTES, read_user_text
from diversynth.errors import shown

# Characters of a class name: prompts put it beside contexts within a text encoder's 77
# tokens (about 300 characters), so a longer one is a description given as a name
MAX_NAME_CHARS = 200
MAX_DESCRIPTION_CHARS = 2000


def _clean(name: object, where: str) -> str:
    if not isinstance(name, str):
        raise ClassListError(f"{where}: class name must be text, got {shown(name)}")
    if len(name) > MAX_NAME_CHARS * 4:  # before any work on it: spaces are folded below
        raise ClassListError(f"{where}: a class name of {len(name):,} characters, above the "
                             f"bound of {MAX_NAME_CHARS} (got {shown(name, 60)})")  # fmt: skip
    text = unicodedata.normalize("NFC", " ".join(name.split()))
    if not text:
        raise ClassListError(f"{where}: class name is empty")
    if len(text) > MAX_NAME_CHARS:
        raise ClassListError(f"{where}: a class name of {len(text):,} characters, above the "
                             f"bound of {MAX_NAME_CHARS} (got {shown(text, 60)}); put the rest "
                             "in its description")  # fmt: skip
    if any(unicodedata.category(ch).startswith("C") for ch in text):
        raise ClassListError(f"{where}: class name has control characters: {shown(name)}")
    return text


def _from_items(items: list[object], where: str) -> list[ClassEntry]:
    if len(items) > MAX_CLASSES:
        raise ClassListError(f"{where}: {len(items):,} classes, above the bound of "
                             f"{MAX_CLASSES:,}")  # fmt: skip
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
        if description is not None and not isinstance(description, str):
            raise ClassListError(f"{where}[{i}].description: must be text, got "
                                 f"{shown(description)}")  # fmt: skip
        if description is not None and len(description) > MAX_DESCRIPTION_CHARS:
            raise ClassListError(f"{where}[{i}].description: {len(description):,} characters, "
                                 f"above the bound of {MAX_DESCRIPTION_CHARS}")  # fmt: skip
        name = _clean(item, f"{where}[{i}]")
        if wnid is not None:
            entries.append(wordnet_entry(i, str(wnid), name, description, f"{where}[{i}].wnid"))
        else:
            entries.append(ClassEntry(i, name, None, description))
    if not entries:
        raise ClassListError(f"{where}: the class list is empty")
    return entries


def _read_file(path: Path) -> list[object]:
    suffix = path.suffix.lower()
    limit = YAML_BYTES if suffix in (".yaml", ".yml") else CLASS_LIST_BYTES
    text = read_user_text(path, "classes.file", limit)
    if suffix in (".txt", ".csv") and text.count("\n") > 2 * MAX_CLASSES:  # before splitting
        raise ClassListError(f"classes.file: {str(path)!r} has {text.count(chr(10)):,} lines, "
                             f"above twice the bound of {MAX_CLASSES:,} classes")  # fmt: skip
    if suffix == ".txt":
        return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if suffix == ".csv":
        rows = [row for row in csv.reader(text.splitlines()) if row and row[0].strip()]
        if rows and rows[0][0].strip().lower() == "name":
            rows = rows[1:]
        return [{"name": r[0], "description": r[1]} if len(r) > 1 else r[0] for r in rows]
    if suffix in (".json", ".yaml", ".yml"):
        if suffix == ".json":
            try:
                data = json.loads(text)
            except ValueError as exc:  # names the line and column
                raise ClassListError(f"classes.file: {path} is not valid json: {exc}") from None
        else:
            data = load_yaml(text, f"classes.file: {path}")
        if isinstance(data, dict) and "classes" in data:
            data = data["classes"]
        if not isinstance(data, list):
            raise ClassListError(f"classes.file: {path} must hold a list of classes")
        return data
    raise ClassListError(f"classes.file: unsupported extension {suffix!r} (.txt .csv .json .yaml)")


def _from_folder(root: Path) -> list[ClassEntry]:
    """The class folders of an ImageFolder (`root/train/*/` if there is one, else `root/*/`),
    sorted by name; a folder named by a wnid becomes that WordNet class."""

    base = root / "train" if (root / "train").is_dir() else root
    folders = sorted(entry.name for entry in os.scandir(base) if entry.is_dir())
    if not folders:
        raise ClassListError(f"classes.folder: no class folders in {str(base)!r}")
    if len(folders) > MAX_CLASSES:
        raise ClassListError(f"classes.folder: {len(folders):,} class folders in "
                             f"{str(base)!r}, above the bound of {MAX_CLASSES:,}")  # fmt: skip
    entries = [
        wordnet_entry(i, name, where=f"classes.folder ({shown(name, 60)})")
        if WNID.match(name)
        else ClassEntry(i, _clean(name, f"classes.folder ({shown(name, 60)})"))
        for i, name in enumerate(folders)
    ]
    return entries


def load_classes(config: Any) -> list[ClassEntry]:
    """The class list a `classes` config section describes, in index order."""
    if config.catalog is not None:
        entries = imagenet_catalog(config.subset)
    elif config.file is not None:
        entries = _from_items(_read_file(config.file), "classes.file")
    elif config.folder is not None:
        entries = _from_folder(config.folder)
    else:
        entries = _from_items(list(config.names or []), "classes.names")
    if config.first is not None:
        entries = entries[: config.first]
    return entries

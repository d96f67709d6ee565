"""A reproducible part of the real data (`data.subset`): few-shot (`per_class`), a
`fraction` of each class, a long tail (`imbalance`), or the images a list file names
(ImageNet-LT's `ImageNet_LT_train.txt` format), and a test list.

The choice is written into the run directory (`real/train.txt`, `real/test.txt`, in the
list format) with the settings it was made from, and read back while they hold: a rerun
or a resumed run trains on the same files even when the data folder has gained some.
Within a class, images are ranked by a hash of (seed, id), not by a random generator:
the same files on any machine and library version, and the 5-shot set of a seed lies
inside its 10-shot set.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as _field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from diversynth.config import MAX_IMAGES, RunConfig, SubsetConfig
from diversynth.data.real import DataError, RealList, real_listing
from diversynth.data.userfiles import LIST_BYTES, read_user_text
from diversynth.errors import shown
from diversynth.run.progress import console
from diversynth.run.rundir import RunDir, digest_json, path_signature, write_json, write_text

if TYPE_CHECKING:
    from diversynth.run.artifacts.records import ClassIdentity

SHOWN = 3  # problems listed per kind (the count says how many in all)


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels, minlength=num_classes)


def _rank(seed: int, image_id: str) -> bytes:
    return hashlib.blake2b(f"{seed}:{image_id}".encode(), digest_size=8).digest()


def _wanted(subset: SubsetConfig, have: np.ndarray) -> np.ndarray:
    """Images per class the rule asks for (before what each class has caps it)."""
    if subset.fraction is not None:
        return np.where(have > 0, np.maximum(1, np.floor(subset.fraction * have + 0.5)), 0)
    if subset.imbalance is None:
        return np.full(len(have), subset.per_class)
    head = subset.per_class or int(have[0])
    last = max(1, len(have) - 1)
    # CIFAR-LT's exponential profile: class i keeps head * imbalance^(-i / (C - 1))
    return np.array([max(1, math.floor(head * subset.imbalance ** (-i / last)))
                     for i in range(len(have))])  # fmt: skip


def _names(classes: Sequence[ClassIdentity], indices: list[int], have: np.ndarray) -> str:
    shown = ", ".join(f"{classes[i]['raw_name']!r} ({have[i]})" for i in indices[:SHOWN])
    more = f" and {len(indices) - SHOWN} more" if len(indices) > SHOWN else ""
    return shown + more


def choose(subset: SubsetConfig, listing: RealList, classes: Sequence[ClassIdentity],
           seed: int, quiet: bool = False) -> RealList:  # fmt: skip
    """The images a per_class / fraction / imbalance rule keeps, in the listing's order."""
    have = class_counts(listing.labels, len(classes))
    wanted = _wanted(subset, have)
    short = [i for i in range(len(classes)) if wanted[i] > have[i]]
    if short:
        field = "per_class" if subset.imbalance is None else "imbalance"
        asked = int(wanted[short[0]])
        what = f"data.subset.{field}: {asked} images asked of classes that have fewer: "
        if subset.strict:
            raise DataError(what + _names(classes, short, have) + " (strict: true)")
        if not quiet:
            console.print(f"  data: {what}{_names(classes, short, have)}; using all they have")
    keep = np.minimum(wanted, have)
    by_class: dict[int, list[tuple[bytes, int]]] = {}
    for position, (image_id, label) in enumerate(zip(listing.ids, listing.labels.tolist(),
                                                     strict=True)):  # fmt: skip
        by_class.setdefault(label, []).append((_rank(seed, image_id), position))
    chosen = sorted(
        position
        for label, ranked in by_class.items()
        for _, position in sorted(ranked)[: int(keep[label])]
    )
    return RealList([listing.ids[p] for p in chosen], listing.labels[chosen])


WNID = re.compile(r"^n\d{8}$")


def _lookups(classes: Sequence[ClassIdentity]) -> tuple[dict[str, int], dict[str, int]]:
    """A list's label token -> class index (the index, or the class's wnid), and a file's
    folder name -> the class it names (its wnid or name, as ImageFolder matches)."""
    wnids = {wnid.casefold(): c["index"] for c in classes if (wnid := c.get("wnid"))}
    labels = {str(c["index"]): c["index"] for c in classes} | wnids
    folders = {c["raw_name"].casefold(): c["index"] for c in classes} | wnids
    return labels, folders


@dataclass
class _Found:
    """Lines with one kind of problem: counted, the first SHOWN kept (a list of millions
    of bad lines must not be held whole)."""

    count: int = 0
    first: list[tuple[int, str]] = _field(default_factory=list)

    def add(self, number: int, text: str) -> None:
        self.count += 1
        if len(self.first) < SHOWN:
            self.first.append((number, text))

    def __bool__(self) -> bool:
        return self.count > 0


def _problems(kind: str, found: _Found) -> str:
    listed = ", ".join(f"line {n} {shown(text, 100)}" for n, text in found.first)
    lines = "1 line" if found.count == 1 else f"{found.count:,} lines"
    return f"{kind} on {lines}: {listed}" + (", ..." if found.count > SHOWN else "")


def read_list(path: Path, root: Path, classes: Sequence[ClassIdentity], field: str,
              fashion_rows: dict[str, int] | None = None) -> RealList:  # fmt: skip
    """A list file: one `relative/path label` a line (blank lines and `#` comments
    skipped). Every problem of a kind is counted and the first three are named, with
    line numbers, in one error: malformed lines, paths outside data.root, files that do
    not exist, labels that are no class of the run (or another class than the file's
    folder names: ImageNet-LT's labels are ImageNet's indices, which a class list of
    another length or order does not share), files listed twice. The file is read only
    when it is a regular file of at most LIST_BYTES (a FIFO would block for ever)."""
    lookup, folders = _lookups(classes)
    ids, labels, seen = [], [], set()
    malformed, outside, missing, unknown, repeated = (
        _Found(),
        _Found(),
        _Found(),
        _Found(),
        _Found(),
    )
    content = read_user_text(path, field, LIST_BYTES)
    lines_in = content.count("\n")
    if lines_in > MAX_IMAGES:  # before a record of each line is made
        raise DataError(f"{field}: {str(path)!r} has {lines_in:,} lines, above the bound of "
                        f"{MAX_IMAGES:,} images (DIVERSYNTH_MAX_IMAGES raises it)")  # fmt: skip
    for number, line in enumerate(io.StringIO(content), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.rsplit("\t", 1) if "\t" in text else text.rsplit(None, 1)
        if len(parts) != 2:
            malformed.add(number, text)
            continue
        image_id, label = parts[0].strip(), parts[1].strip()
        relative = PurePosixPath(image_id)
        key = relative.as_posix()
        if relative.is_absolute() or ".." in relative.parts:
            outside.add(number, image_id)
            continue
        if fashion_rows is not None:
            split, _, row = image_id.partition("/")
            exists = split in fashion_rows and row.isdigit() and int(row) < fashion_rows[split]
        else:
            exists = (root / relative).is_file()
        if not exists:
            missing.add(number, image_id)
        folder = relative.parent.name.casefold()
        named = folders.get(folder)
        foreign = named is None and WNID.match(folder)  # a wnid folder of no class listed
        if label.casefold() not in lookup or foreign:
            unknown.add(number, f"{label} ({folder})" if foreign else label)
            continue
        if named is not None and named != lookup[label.casefold()]:
            unknown.add(number, f"{label}, but the folder {folder!r} is class {named}")
            continue
        if key in seen:
            repeated.add(number, image_id)
            continue
        seen.add(key)
        ids.append(key)
        labels.append(lookup[label.casefold()])
    lines = [
        f"{field}: {str(path)!r}: " + _problems(kind, items)
        for kind, items in (
            ("not `path label`", malformed),
            ("a path outside data.root", outside),
            (f"a file that does not exist under {str(root)!r}", missing),
            (f"a class that is not in the class list (labels are class indices 0-"
             f"{len(classes) - 1} or wnids, and agree with a folder named by wnid or name)",
             unknown),
            ("a file listed before", repeated),
        )
        if items
    ]  # fmt: skip
    if lines:
        raise DataError("\n".join(lines))
    if not ids:
        raise DataError(f"{field}: {str(path)!r} names no images")
    return RealList(ids, np.array(labels, dtype=np.int64))


def write_list(path: Path, listing: RealList) -> None:
    write_text(path, "".join(f"{i} {label}\n" for i, label in
                             zip(listing.ids, listing.labels.tolist(), strict=True)))  # fmt: skip


def _fashion_rows(config: RunConfig) -> dict[str, int] | None:
    """Fashion-MNIST's images per split (ids are `split/ROW`), None for a folder."""
    from diversynth.data.real import FASHION_FILES, idx_length

    data = config.data
    assert data is not None
    if data.format != "fashion-mnist":
        return None
    return {split: idx_length(data.root / files[1]) for split, files in FASHION_FILES.items()}


def chosen_listing(config: RunConfig, split: str, classes: Sequence[ClassIdentity],
                   quiet: bool = False) -> RealList | None:  # fmt: skip
    """The part of the split `data.subset` chooses, freshly made; None when it keeps all."""
    data = config.data
    subset = data.subset if data else None
    if data is None or subset is None:
        return None
    if split == "test":
        if subset.test_list is None:
            return None
        return read_list(subset.test_list, data.root, classes, "data.subset.test_list",
                         _fashion_rows(config))  # fmt: skip
    if subset.list is not None:
        return read_list(subset.list, data.root, classes, "data.subset.list", _fashion_rows(config))
    if not subset.chooses_train:
        return None
    return choose(subset, real_listing(data, "train", classes), classes, _seed(config), quiet)


def _settings(config: RunConfig, split: str, classes: Sequence[ClassIdentity]) -> str:
    """What a saved choice of `split` was made from, and nothing else (a new test_limit
    keeps the training images): the data folder, the split's limit, the subset's rule
    and seed or its list file, the classes."""
    data, subset = config.data, config.data.subset if config.data else None
    assert data is not None and subset is not None
    rule: dict[str, Any] = {}
    if split == "test":
        limit, listed = data.test_limit, subset.test_list
    else:
        limit, listed = data.train_limit, subset.list
        rule = {"seed": _seed(config), **subset.model_dump(
            mode="json", include={"per_class", "fraction", "imbalance", "strict"})}  # fmt: skip
    return digest_json({
        "split": split, "format": data.format, "root": str(data.root), "limit": limit, **rule,
        "list": path_signature(listed) if listed else None,
        "classes": [[c["index"], c.get("wnid"), c["raw_name"]] for c in classes],
    })  # fmt: skip


def _seed(config: RunConfig) -> int:
    subset = config.data.subset if config.data else None
    return config.seed if subset is None or subset.seed is None else subset.seed


def saved_path(run: RunDir, split: str) -> Path:
    return run.root / "real" / f"{split}.txt"


def real_subset(config: RunConfig, run: RunDir | None, split: str,
                classes: Sequence[ClassIdentity]) -> RealList | None:  # fmt: skip
    """The images of the split this run uses when `data.subset` chooses some: read from
    the run directory when it holds a choice made from these settings, else made and
    saved there (list first, then its settings: a crash between leaves a list that is
    made again). None when the whole split is used."""
    if run is None or config.data is None or config.data.subset is None:
        return chosen_listing(config, split, classes)
    path = saved_path(run, split)
    info = path.with_suffix(".json")
    settings = _settings(config, split, classes)
    if path.is_file() and info.is_file() and _recorded(info) == settings:
        assert config.data is not None
        field = f"the run's saved {split} subset (delete {path.name} to choose again)"
        return read_list(path, config.data.root, classes, field, _fashion_rows(config))
    listing = chosen_listing(config, split, classes)
    if listing is None:
        return None
    write_list(path, listing)
    counts = class_counts(listing.labels, len(classes)).tolist()
    write_json(info, {"settings": settings, "images": len(listing), "per_class": counts})
    return listing


def _recorded(info: Path) -> str | None:
    try:
        return json.loads(info.read_text()).get("settings")
    except (OSError, ValueError, AttributeError):
        return None


def train_counts(config: RunConfig, run: RunDir | None,
                 classes: Sequence[ClassIdentity]) -> np.ndarray:  # fmt: skip
    """Real training images per class, as the train stage will see them."""
    assert config.data is not None
    listing = real_subset(config, run, "train", classes)
    if listing is None:
        listing = real_listing(config.data, "train", classes)
    return class_counts(listing.labels, len(classes))


def real_train_counts(config: RunConfig) -> np.ndarray:
    """Real training images per class: the subset's, or the whole train split's."""
    from diversynth.data.classes.catalog import load_classes
    from diversynth.data.real import real_listing

    assert config.data is not None
    classes = [entry.identity() for entry in load_classes(config.classes)]
    train = chosen_listing(config, "train", classes, quiet=True)
    if train is None:  # no subset: every training image counts
        train = real_listing(config.data, "train", classes)
    return class_counts(train.labels, len(classes))

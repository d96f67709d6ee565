"""The real data, checked: its folder layout before any stage runs (a listing: no image is
opened), and every image decoded (`diversynth verify --data`, `data.skip_unreadable`).

The layout check is what `preflight` runs whenever a selected stage will read real images:
each split folder there, a folder for every class, at least one image in each. It costs a
directory listing (and stops at each class folder's first image), so a data root without
`val/` or a class the data lacks stops `diversynth run` before the classes, prompts and
generate stages rather than after them.

Decoding every image is another matter (ImageNet's 1.28M JPEGs take minutes on many
cores), so it runs only when asked: `diversynth verify --data CONFIG` lists every image
that cannot be read, and `data.skip_unreadable: true` leaves them out of every split. The
images left out are found once per run and saved in the run directory
(`real/unreadable-<split>.json`), keyed by the identity of the files scanned (each one's
path, size and modification time), as `real_subset` saves a chosen subset: a resumed run,
and the evaluate and leaks stages after train, see exactly the images the first one did,
without decoding them again; a changed file is scanned again (and changes the stage
fingerprints, which hash the data folder's files the same way).

Nothing here imports torch: preflight runs it before any stage that needs torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diversynth.data.images import (
    IMAGE_EXTENSIONS,
    count_images,
    decode_problem,
    has_image,
    match_class_folders,
)
from diversynth.errors import shown

if TYPE_CHECKING:
    from diversynth.config import RunConfig
    from diversynth.data.real import RealList
    from diversynth.run.artifacts.records import ClassIdentity
    from diversynth.run.rundir import RunDir

SHOWN = 3  # items named per problem (the count says how many in all)
# the real data's split folders (realdata.IMAGEFOLDER_SPLITS)
SPLIT_FOLDERS = {"train": "train", "test": "val"}


# -- one line from a DataLoader worker -------------------------------------------------


# -- reading one image -----------------------------------------------------------------


# -- the layout, before any stage runs -------------------------------------------------


def _names(items: Sequence[str]) -> str:
    shown_ = ", ".join(shown(item, 60) for item in items[:SHOWN])
    return shown_ + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def folder_split_problems(root: Path, split: str, classes: Sequence[ClassIdentity],
                          readers: list[str]) -> list[str]:  # fmt: skip
    """An image-folder split as its readers (the stages, in words) need it: the folder, a
    folder for every class, an image in each."""
    folder = SPLIT_FOLDERS[split]
    base = root / folder
    if not base.is_dir():
        return [f"data.root: {str(root)!r} has no {folder}/ folder (the {split} split, which "
                f"{_join(readers)} {_read(readers)})"]  # fmt: skip
    mapping = match_class_folders(base, classes)
    matched = set(mapping.values())
    missing = [c["raw_name"] for c in classes if c["index"] not in matched]
    lines = []
    if missing:
        lines.append(f"data.root: {folder}/ has no folder for {len(missing)} of the "
                     f"{len(classes)} classes: {_names(missing)} (a class's folder is named by "
                     "its wnid, its name or its index)")  # fmt: skip
    empty = [f"{folder}/{name}" for name in sorted(mapping) if not has_image(base / name)]
    if empty:
        lines.append(f"data.root: {len(empty)} class folder(s) without an image: "
                     f"{_names(empty)} (images end in {', '.join(IMAGE_EXTENSIONS)})")  # fmt: skip
    return lines


def set_problems(index: int, name: str, root: Path, classes: Sequence[ClassIdentity]) -> list[str]:
    """An evaluate.sets folder: a folder for at least one class, and an image in them."""
    field = f"evaluate.sets[{index}].root ({name!r})"
    if not root.is_dir():
        return [f"{field}: {str(root)!r} is not a folder"]
    mapping = match_class_folders(root, classes, field)
    if not mapping:
        have = sorted(e.name for e in os.scandir(root) if e.is_dir())
        return [f"{field}: no folder in {str(root)!r} is named by a class's wnid, name or "
                f"index (its folders: {_names(have) if have else 'none'})"]  # fmt: skip
    if not any(has_image(root / folder) for folder in mapping):
        return [f"{field}: its {len(mapping)} class folder(s) hold no image "
                f"(images end in {', '.join(IMAGE_EXTENSIONS)})"]  # fmt: skip
    return []


def _readers(config: RunConfig, stages: Iterable[str]) -> dict[str, list[str]]:
    """Which selected stages read each part of the real data: the `train` and `test`
    splits, the evaluate.sets folders (`sets`), and the train/ folder alone (`exemplars`:
    the classes stage in CLIP mode takes up to `exemplars` images a class, none needed)."""
    selected = set(stages)
    data = config.data
    readers: dict[str, list[str]] = {"train": [], "test": [], "sets": [], "exemplars": []}
    if data is None:
        return readers
    rule = config.classes.disambiguate
    if "classes" in selected and config.disambiguation_mode == "clip" and rule.exemplars > 0:
        readers["exemplars"].append("the classes stage (CLIP exemplars)")
    if "train" in selected:
        readers["train"].append("the train stage")
        if config.train.validate_every is not None:
            readers["test"].append("the train stage (validation)")
    leaks = "leaks" in selected and config.leaks.check and config.clip is not None
    for stage, reads in (("leaks", leaks), ("evaluate", "evaluate" in selected)):
        if reads:
            readers["test"].append(f"the {stage} stage")
            readers["sets"].append(f"the {stage} stage")
    if "evaluate" in selected and data.format == "imagefolder" and (data.root / "train").is_dir():
        readers["train"].append("the evaluate stage (images per class)")
    return readers


def _join(readers: list[str]) -> str:
    return readers[0] if len(readers) == 1 else ", ".join(readers[:-1]) + " and " + readers[-1]


def _read(readers: list[str]) -> str:
    return "reads" if len(readers) == 1 else "read"


def layout_problems(config: RunConfig, stages: Iterable[str],
                    classes: Sequence[ClassIdentity]) -> list[str]:  # fmt: skip
    """What the selected stages would find missing in the real data and evaluate.sets, one
    line per problem, from listings alone."""
    readers = _readers(config, stages)
    data = config.data
    lines: list[str] = []
    if data is None:
        return lines
    subset = data.subset
    listed = {"train": subset is not None and subset.list is not None,
              "test": subset is not None and subset.test_list is not None}  # fmt: skip
    if data.format == "fashion-mnist":
        lines += _fashion_problems(config, readers, classes)
    else:
        for split in ("train", "test"):
            if readers[split] and not listed[split]:  # a list file names its own files
                lines += folder_split_problems(data.root, split, classes, readers[split])
        if readers["exemplars"] and not readers["train"] and not listed["train"]:
            if not (data.root / "train").is_dir():
                lines.append(f"data.root: {str(data.root)!r} has no train/ folder (which "
                             f"{readers['exemplars'][0]} reads)")  # fmt: skip
    if readers["sets"]:
        for i, extra in enumerate(config.evaluate.sets):
            lines += set_problems(i, extra.name, extra.root, classes)
    return lines


def _fashion_problems(config: RunConfig, readers: dict[str, list[str]],
                      classes: Sequence[ClassIdentity]) -> list[str]:  # fmt: skip
    from diversynth.data.real import (
        FASHION_FILES,
        FASHION_MNIST_CLASSES,
        DataError,
        catalog_to_dataset_labels,
        idx_problem,
    )

    data = config.data
    assert data is not None
    wanted = {"train": readers["train"] or readers["exemplars"], "test": readers["test"]}
    lines = []
    for split, who in wanted.items():
        for name in FASHION_FILES[split] if who else ():
            problem = idx_problem(data.root / name)
            if problem:
                lines.append(f"data.root: {problem} (Fashion-MNIST's {split} split, which "
                             f"{_join(who)} {_read(who)})")  # fmt: skip
    # every class needs its images where a split is trained or evaluated on; exemplars
    # are taken where a class has them (none for a class the data lacks)
    if readers["train"] or readers["test"]:
        try:
            catalog_to_dataset_labels([c["raw_name"] for c in classes], FASHION_MNIST_CLASSES)
        except DataError as exc:
            lines.append(str(exc))
    return lines


def train_images(config: RunConfig, classes: Sequence[ClassIdentity], stop: int) -> int:
    """The training images of an image-folder data root, from the listing (the files of
    train/'s class folders), counted up to `stop` and cut to data.train_limit."""
    data = config.data
    assert data is not None and data.format == "imagefolder"
    base = data.root / "train"
    mapping = match_class_folders(base, classes)
    limit = min(stop, data.train_limit or stop)
    count = 0
    for folder in sorted(mapping):
        count += count_images(base / folder, limit - count)
        if count >= limit:
            break
    return min(count, limit)


# -- decoding every image --------------------------------------------------------------


def default_workers() -> int:
    return max(1, min(32, os.cpu_count() or 1))


Check = Callable[[Path], "str | None"]


def scan(root: Path, ids: Sequence[str], label: str, workers: int | None = None,
         check: Check = decode_problem) -> list[tuple[int, str]]:  # fmt: skip
    """(position, why) of each file of `ids` (relative to `root`) that cannot be read, in
    order. A thread pool decodes them (PIL releases the GIL while it decodes); at most a
    few per thread are in flight, so memory stays flat at any number of images."""
    from diversynth.run.progress import counting

    workers = workers or default_workers()
    found: list[tuple[int, str]] = []
    pending: deque[tuple[int, Future[str | None]]] = deque()

    def settle(step: Callable[..., None]) -> None:
        position, future = pending.popleft()
        why = future.result()
        if why is not None:
            found.append((position, why))
        step(1)

    with ThreadPoolExecutor(workers) as pool, counting(label, len(ids), "images") as step:
        for position, image_id in enumerate(ids):
            pending.append((position, pool.submit(check, root / image_id)))
            if len(pending) >= 4 * workers:
                settle(step)
        while pending:
            settle(step)
    return found


@dataclass(frozen=True)
class Unreadable:
    """An image that cannot be read: where (`data.root`, `evaluate.sets[0].root`), its
    path under that root, its class, and why."""

    where: str
    path: str
    label: int
    class_name: str
    why: str

    def __str__(self) -> str:
        return f"{self.where}: {self.path!r} (class {self.label} {self.class_name!r}): {self.why}"


def _identity(root: Path, ids: Sequence[str]) -> str:
    """The identity of the files scanned: each one's path, size and modification time (a
    file replaced or changed in place gets another)."""
    digest = hashlib.sha256(f"{root}\n".encode())
    for image_id in ids:
        try:
            info = os.stat(root / image_id)
            signature = f"{info.st_size}:{info.st_mtime_ns}"
        except OSError:
            signature = "missing"
        digest.update(f"{image_id}\t{signature}\n".encode())
    return digest.hexdigest()


def saved_scan_path(run: RunDir, source: str) -> Path:
    return run.root / "real" / f"unreadable-{source}.json"


def _saved(path: Path, identity: str) -> list[tuple[str, str]] | None:
    try:
        record = json.loads(path.read_text())
        if record.get("identity") == identity:
            return [(str(image_id), str(why)) for image_id, why in record["unreadable"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def unreadable_ids(root: Path, ids: Sequence[str], run: RunDir | None, source: str,
                   label: str) -> tuple[list[tuple[str, str]], Path | None]:  # fmt: skip
    """(id, why) of the files of `ids` that cannot be read: from the run's saved scan of
    these very files when it has one, else scanned now (and saved, by the first process)."""
    if run is None:
        return [(ids[k], why) for k, why in scan(root, ids, label)], None
    from diversynth.run.rundir import write_json

    path = saved_scan_path(run, source)
    identity = _identity(root, ids)
    found = _saved(path, identity)
    if found is None:
        found = [(ids[k], why) for k, why in scan(root, ids, label)]
        if os.environ.get("RANK", "0") == "0":  # under torchrun the first process writes
            write_json(path, {"identity": identity, "root": str(root), "images": len(ids),
                              "unreadable": [list(item) for item in found]})  # fmt: skip
    return found, path


def _say_left_out(what: str, total: int, found: list[tuple[str, str]], path: Path | None) -> None:
    from rich.markup import escape

    from diversynth.run.progress import console

    if not found:
        line = f"  data.skip_unreadable: all {total:,} images of {what} can be read"
    else:
        first_id, why = found[0]
        saved = f"; all of them in {path.parent.name}/{path.name}" if path else ""
        line = (f"  data.skip_unreadable: {len(found):,} of the {total:,} images of {what} "
                f"cannot be read and are left out (first: {first_id!r}: {why}){saved}")  # fmt: skip
    console.print(escape(line), highlight=False, soft_wrap=True)


def readable_listing(config: RunConfig, run: RunDir | None, split: str,
                     listing: RealList) -> tuple[RealList, int]:  # fmt: skip
    """A real split's listing less the images that cannot be read, with their count, when
    `data.skip_unreadable` is on (Fashion-MNIST's arrays always can be); else as it is."""
    data = config.data
    if data is None or not data.skip_unreadable or data.format == "fashion-mnist":
        return listing, 0
    from diversynth.data.real import RealList

    what = f"the real {split} split"
    found, path = unreadable_ids(data.root, listing.ids, run, split, f"data: reading {what}")
    _say_left_out(what, len(listing), found, path)
    if not found:
        return listing, 0
    bad = {image_id for image_id, _ in found}
    keep = [k for k, image_id in enumerate(listing.ids) if image_id not in bad]
    return RealList([listing.ids[k] for k in keep], listing.labels[keep]), len(found)


def readable_folder(config: RunConfig, run: RunDir | None, index: int, dataset: Any) -> int:
    """An evaluate.sets folder (an ImageFolder) less the images that cannot be read, when
    `data.skip_unreadable` is on; how many were left out."""
    data = config.data
    if data is None or not data.skip_unreadable:
        return 0
    root = Path(dataset.root)
    ids = [Path(path).relative_to(root).as_posix() for path, _ in dataset.samples]
    name = config.evaluate.sets[index].name
    what = f"evaluate.sets[{index}] ({name!r})"
    found, path = unreadable_ids(root, ids, run, f"set{index}", f"data: reading {name}")
    _say_left_out(what, len(ids), found, path)
    if not found:
        return 0
    bad = {image_id for image_id, _ in found}
    kept = [sample for sample, image_id in zip(dataset.samples, ids, strict=True)
            if image_id not in bad]  # fmt: skip
    dataset.samples = dataset.imgs = kept
    dataset.targets = [label for _, label in kept]
    return len(found)


def unreadable_images(config: RunConfig, workers: int | None = None) -> list[Unreadable]:
    """Every image of the config's real data that cannot be read, decoding each (`diversynth
    verify --data`): the train and test splits as a run reads them (data.subset's choice or
    lists, the limits) and every evaluate.sets folder. Nothing is written."""
    from diversynth.data.classes.catalog import load_classes
    from diversynth.data.real import CatalogImageFolder, real_listing
    from diversynth.data.subset import chosen_listing

    classes = [entry.identity() for entry in load_classes(config.classes)]
    names = {c["index"]: c["raw_name"] for c in classes}
    found: list[Unreadable] = []
    data = config.data
    if data is not None and data.format == "imagefolder":
        for split in ("train", "test"):
            listing = chosen_listing(config, split, classes, quiet=True)
            if listing is None:
                if not (data.root / SPLIT_FOLDERS[split]).is_dir():
                    continue  # a data root of val/ only (or of train/ only)
                listing = real_listing(data, split, classes)
            labels = listing.labels.tolist()
            for k, why in scan(data.root, listing.ids, f"verify: {split} split", workers):
                found.append(Unreadable("data.root", listing.ids[k], labels[k],
                                        names.get(labels[k], "?"), why))  # fmt: skip
    for i, extra in enumerate(config.evaluate.sets):
        field = f"evaluate.sets[{i}].root ({extra.name!r})"
        folder = CatalogImageFolder(extra.root, classes, None, require_all=False,
                                    field=field)  # fmt: skip
        ids = [Path(path).relative_to(extra.root).as_posix() for path, _ in folder.samples]
        for k, why in scan(extra.root, ids, f"verify: {extra.name}", workers):
            label = folder.samples[k][1]
            found.append(Unreadable(f"evaluate.sets[{i}].root", ids[k], label,
                                    names.get(label, "?"), why))  # fmt: skip
    return found


def verify_data(config: RunConfig, workers: int | None = None) -> int:
    """`diversynth verify --data`: print each unreadable image of the config's real data
    (one line each) and what to do; return how many there are."""
    from rich.markup import escape

    from diversynth.run.progress import console

    found = unreadable_images(config, workers)
    for item in found:
        console.print(f"[red]unreadable:[/red] {escape(str(item))}", highlight=False,
                      soft_wrap=True)  # fmt: skip
    if found:
        console.print(f"{len(found)} image(s) cannot be read: replace or delete them, or set "
                      "data.skip_unreadable: true to leave them out of every split",
                      highlight=False, soft_wrap=True)  # fmt: skip
    else:
        console.print("every image of the real data can be read", highlight=False)
    return len(found)

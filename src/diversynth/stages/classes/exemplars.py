"""Real exemplar images per class, for choosing names with CLIP."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

from PIL import Image

from diversynth.config import RealDataConfig
from diversynth.data.classes.entry import ClassEntry
from diversynth.data.images import ImageReadError, open_rgb
from diversynth.data.real import (
    FASHION_FILES,
    FASHION_MNIST_CLASSES,
    UNREADABLE_HINT,
    RealList,
    listed_dataset,
    read_idx,
)
from diversynth.errors import DiversynthError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def _fashion_mnist(
    data: RealDataConfig, classes: list[ClassEntry], k: int
) -> list[list[Image.Image]]:
    """The first k training images of each class that Fashion-MNIST has (by name)."""
    image_file, label_file = FASHION_FILES["train"]
    labels = read_idx(data.root / label_file)
    images = read_idx(data.root / image_file)
    label_of = {name.casefold(): i for i, name in enumerate(FASHION_MNIST_CLASSES)}
    found: list[list[Image.Image]] = []
    for entry in classes:
        label = label_of.get(entry.raw_name.casefold())
        rows = (labels == label).nonzero()[0][:k] if label is not None else []
        found.append([Image.fromarray(images[row]) for row in rows])
    return found


def _folder_files(base: Path, classes: list[ClassEntry], k: int) -> list[list[Path]]:
    """The first k image files (by name) of each class's folder: matched by wnid, else name."""
    folders = {e.name.casefold(): Path(e.path) for e in os.scandir(base) if e.is_dir()}
    files: list[list[Path]] = []
    for entry in classes:
        folder = next(
            (folders[key.casefold()] for key in (entry.wnid, entry.raw_name)
             if key and key.casefold() in folders),
            None,
        )  # fmt: skip
        names = sorted(
            e.name for e in os.scandir(folder) if Path(e.name).suffix.lower() in IMAGE_SUFFIXES
        ) if folder else []  # fmt: skip
        files.append([folder / name for name in names[:k]] if folder else [])
    return files


def _open(path: Path, root: Path) -> Image.Image:
    """An exemplar, read only when it is a regular file (a FIFO would block); one that
    cannot be read is named, as the train stage names it."""
    try:
        return open_rgb(path)
    except ImageReadError as why:
        raise DiversynthError(
            f"data.root: {path.relative_to(root).as_posix()!r} (an exemplar for the classes "
            f"stage) cannot be read: {why}; {UNREADABLE_HINT}"
        ) from None


def _chosen(data: RealDataConfig, classes: list[ClassEntry], k: int,
            chosen: RealList) -> list[list[Image.Image]]:  # fmt: skip
    """The first k images of each class among those a subset chose."""
    positions: dict[int, list[int]] = {}
    for position, label in enumerate(chosen.labels.tolist()):
        if len(positions.setdefault(label, [])) < k:
            positions[label].append(position)
    images = listed_dataset(data, chosen, lambda image: image)
    # the identity transform: the dataset's items are the PIL images themselves
    return [[cast(Image.Image, images[p][0]) for p in positions.get(entry.index, [])]
            for entry in classes]  # fmt: skip


def exemplar_images(data: RealDataConfig, classes: list[ClassEntry], k: int,
                    chosen: RealList | None = None) -> list[list[Image.Image]]:  # fmt: skip
    """Up to k real training images per class (fewer, or none, where the data has fewer);
    with a subset (`chosen`), from its images only: a few-shot run sees no other real
    image, not even to choose names."""
    if chosen is not None:
        return _chosen(data, classes, k, chosen)
    if data.format == "fashion-mnist":
        return _fashion_mnist(data, classes, k)
    base = data.root / "train"
    if not base.is_dir():
        raise DiversynthError(f"data.root: {str(data.root)!r} has no train/ folder for exemplars")
    files = _folder_files(base, classes, k)
    with ThreadPoolExecutor(max_workers=8) as pool:
        flat = list(pool.map(lambda path: _open(path, data.root),
                             [path for group in files for path in group]))  # fmt: skip
    images, start = [], 0
    for group in files:
        images.append(flat[start : start + len(group)])
        start += len(group)
    return images

"""The real labelled images: Fashion-MNIST's IDX files or an ImageFolder, with labels in
the class catalog's index order. The classes stage reads exemplars from here and the train
and evaluate stages their splits."""

from __future__ import annotations

import gzip
import math
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from diversynth.config import RealDataConfig
from diversynth.data.images import ImageReadError, OneLineFromWorkers, match_class_folders, open_rgb
from diversynth.errors import UsageError, shown

if TYPE_CHECKING:
    from diversynth.run.artifacts.records import ClassIdentity

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DataError(UsageError, ValueError):
    pass


class UnreadableImageError(OneLineFromWorkers, DataError):
    """A real image that cannot be read, named (one line, also from a loader worker)."""


# what the stage says beside an image that cannot be read
UNREADABLE_HINT = ("`diversynth verify --data CONFIG` lists every such image; "
                   "data.skip_unreadable: true leaves them out")  # fmt: skip
# An IDX file's pixels: Fashion-MNIST's training images are 47 MB, EMNIST's largest 640 MB
IDX_BYTES = 4 << 30


def _idx_path(path: Path) -> Path | None:
    """An IDX file, plain or gzipped (`name.gz`, or `name` with its last suffix `.gz`)."""
    for candidate in (path, path.with_suffix(".gz"), path.with_name(path.name + ".gz")):
        if os.path.lexists(candidate):
            return candidate
    return None


def idx_problem(path: Path) -> str | None:
    """Why the IDX file `path` (or its .gz) cannot be read (None: it can)."""
    found = _idx_path(path)
    if found is None:
        return f"{str(path.parent)!r} has no {path.name} (or {path.name}.gz) file"
    try:
        mode = os.stat(found).st_mode
    except OSError as exc:
        return f"{str(found)!r} cannot be read ({exc.strerror})"
    if not stat.S_ISREG(mode):
        return f"{str(found)!r} is not a regular file"
    return None


def _open_idx(path: Path) -> BinaryIO:
    """An IDX file (the MNIST file format), plain or gzipped, opened for reading: only a
    regular file (a FIFO would block)."""
    problem = idx_problem(path)
    if problem:
        raise DataError(f"data.root: {problem}")
    found = _idx_path(path)
    assert found is not None
    if found.suffix == ".gz":
        # gzip.open types its result as a GzipFile: a binary file, read as one here
        return cast(BinaryIO, gzip.open(found, "rb"))
    return open(found, "rb")


def _idx_header(handle: BinaryIO, path: Path) -> tuple[int, ...]:
    head = handle.read(4)
    ndim = head[3] if len(head) == 4 else 0
    dims = handle.read(4 * ndim)
    if len(head) < 4 or head[:3] != b"\0\0\x08" or not ndim or len(dims) < 4 * ndim:
        raise DataError(f"data.root: {str(path)!r} is not an IDX file of bytes")
    return tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))


def idx_length(path: Path) -> int:
    """The number of items in an IDX file, from its header alone."""
    with _open_idx(path) as handle:
        return _idx_header(handle, path)[0]


def read_idx(path: Path) -> np.ndarray:
    """An IDX array.

    torchvision's FashionMNIST wants its own folder layout and unpacks into it; Debian's
    read-only /usr/share copy is read here in place instead. Only the bytes the header
    announces are read (at most IDX_BYTES): a gzip bomb or a growing file is cut there.
    """
    with _open_idx(path) as handle:
        shape = _idx_header(handle, path)
        size = math.prod(shape)
        if size > IDX_BYTES:
            raise DataError(f"data.root: {str(path)!r} announces {size:,} bytes of pixels, "
                            f"above the bound of {IDX_BYTES >> 30} GB")  # fmt: skip
        data = handle.read(size)
    if len(data) < size:
        raise DataError(f"data.root: {str(path)!r} is cut short ({len(data):,} of {size:,} "
                        "bytes)")  # fmt: skip
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def catalog_to_dataset_labels(class_names: list[str], dataset_names: list[str]) -> list[int]:
    """For each catalog class (in index order), the dataset's label for it."""
    lookup = {name.casefold(): i for i, name in enumerate(dataset_names)}
    missing = [name for name in class_names if name.casefold() not in lookup]
    if missing:
        raise DataError(
            f"data: classes not in the real dataset: {shown(missing)} (it has {dataset_names})"
        )
    labels = [lookup[name.casefold()] for name in class_names]
    first: dict[int, int] = {}
    for index, label in enumerate(labels):
        other = first.setdefault(label, index)
        if other != index:  # the dataset's images of that label would all go to one
            raise DataError(
                f"data: classes {other} ({class_names[other]!r}) and {index} "
                f"({class_names[index]!r}) are both the dataset's {dataset_names[label]!r} "
                "(names match in any case): keep one"
            )
    return labels


class ArrayImages(Dataset):
    """Images held as a uint8 array (N, H, W) with catalog-index labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def raw(self, i: int) -> np.ndarray:
        """Image i's pixels (H, W)."""
        return self.images[i]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


class CatalogImageFolder(ImageFolder):
    """An ImageFolder whose labels come from the class list, not from sorted folder names.

    A folder matches a class by its wnid (ImageNet's `n01440764`), its name (any case), or
    its index (ImageNet-V2's `0` ... `999`); folders that match no class are skipped. With
    `require_all` false, a set may hold only some of the classes (ImageNet-R, -A).
    """

    def __init__(self, root: Path, classes: Sequence[ClassIdentity], transform: Callable | None,
                 require_all: bool = True, field: str = "data.root") -> None:  # fmt: skip
        self._catalog = classes
        self._require_all = require_all
        self.field = field  # the setting that names the folder, for messages
        try:
            super().__init__(str(root), transform=transform, allow_empty=not require_all)
        except FileNotFoundError as exc:  # a class folder without an image
            raise DataError(f"{field}: {' '.join(str(exc).split())} (in {str(root)!r})") from None

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        mapping = match_class_folders(Path(directory), self._catalog, self.field)
        missing = [c["raw_name"] for c in self._catalog if c["index"] not in mapping.values()]
        if not mapping or (missing and self._require_all):
            raise DataError(f"{self.field}: no folder in {directory} for classes {missing[:5]}")
        return sorted(mapping), mapping

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        try:
            image = open_rgb(Path(path))
        except ImageReadError as why:
            relative = Path(path).relative_to(self.root).as_posix()
            name = next((c["raw_name"] for c in self._catalog if c["index"] == target), "?")
            raise UnreadableImageError(
                f"{self.field}: {relative!r} (class {target} {name!r}) cannot be read: {why}; "
                f"{UNREADABLE_HINT}"
            ) from None
        if self.transform is not None:
            image = self.transform(image)
        return image, target


IMAGEFOLDER_SPLITS = {"train": "train", "test": "val"}


@dataclass(frozen=True)
class RealList:
    """A split's images by id, with catalog-index labels. An id is a path relative to
    data.root (`train/n01440764/n01440764_10026.JPEG`, as ImageNet-LT's lists have them);
    for Fashion-MNIST it is `train/ROW` or `test/ROW`, the image's row in its IDX file."""

    ids: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def _every_kth(length: int, limit: int | None) -> list[int]:
    """A fixed, class-balanced-in-expectation part of a folder split: every k-th image."""
    if not limit or limit >= length:
        return list(range(length))
    step = length / limit
    return [int(i * step) for i in range(limit)]


def real_listing(config: RealDataConfig, split: str,
                 classes: Sequence[ClassIdentity]) -> RealList:  # fmt: skip
    """Every image of the `train` or `test` split that the classes have, in the dataset's
    order, cut to train_limit / test_limit as real_dataset cuts it."""
    limit = config.train_limit if split == "train" else config.test_limit
    if config.format == "fashion-mnist":
        labels = read_idx(config.root / FASHION_FILES[split][1])
        wanted = catalog_to_dataset_labels([c["raw_name"] for c in classes], FASHION_MNIST_CLASSES)
        to_catalog = np.full(len(FASHION_MNIST_CLASSES), -1)
        to_catalog[wanted] = np.arange(len(wanted))
        rows = np.nonzero(to_catalog[labels] >= 0)[0][: limit or None]
        return RealList([f"{split}/{row}" for row in rows.tolist()], to_catalog[labels[rows]])
    folder = config.root / IMAGEFOLDER_SPLITS[split]
    if not folder.is_dir():
        raise DataError(f"data.root: {str(config.root)!r} has no {folder.name}/ folder (the "
                        f"{split} split)")  # fmt: skip
    samples = CatalogImageFolder(folder, classes, transform=None).samples
    kept = [samples[i] for i in _every_kth(len(samples), limit)]
    return RealList([Path(path).relative_to(config.root).as_posix() for path, _ in kept],
                    np.array([label for _, label in kept], dtype=np.int64))  # fmt: skip


# The largest image file read whole (decode_on: device): past it a file is no photo
IMAGE_BYTES = 1 << 30


class ListedImages(Dataset):
    """The image files a RealList names, under data.root. An image that cannot be read
    stops the stage with one line naming it, its class, and what to do."""

    def __init__(self, root: Path, listing: RealList, transform: Callable,
                 class_names: list[str] | None = None) -> None:  # fmt: skip
        self.root, self.ids, self.transform = root, listing.ids, transform
        self.labels = listing.labels
        self.class_names = class_names  # by catalog index, for messages

    def __len__(self) -> int:
        return len(self.ids)

    def _unreadable(self, i: int, why: object) -> UnreadableImageError:
        label = int(self.labels[i])
        names = self.class_names
        name = f" {names[label]!r}" if names is not None and 0 <= label < len(names) else ""
        return UnreadableImageError(f"data.root: {self.ids[i]!r} (class {label}{name}) cannot "
                                    f"be read: {why}; {UNREADABLE_HINT}")  # fmt: skip

    def raw(self, i: int) -> bytes:
        """Image i's file, undecoded (a regular file of at most IMAGE_BYTES)."""
        try:
            fd = os.open(self.root / self.ids[i], os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise self._unreadable(i, f"cannot be opened ({exc.strerror})") from None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise self._unreadable(i, "is not a regular file")
            if info.st_size > IMAGE_BYTES:
                bound = f"above the bound of {IMAGE_BYTES >> 20} MB"
                raise self._unreadable(i, f"is {info.st_size:,} bytes, {bound}")
            return handle.read(IMAGE_BYTES + 1)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            image = open_rgb(self.root / self.ids[i])
        except ImageReadError as why:
            raise self._unreadable(i, why) from None
        return self.transform(image), int(self.labels[i])


def listed_dataset(config: RealDataConfig, listing: RealList, transform: Callable,
                   classes: Sequence[ClassIdentity] | None = None,
                   ) -> ArrayImages | ListedImages:  # fmt: skip
    """The images of a listing (a saved subset, a test list) as a dataset; `classes` name
    the class of an image that cannot be read."""
    if config.format != "fashion-mnist":
        names = None
        if classes is not None:
            names = [""] * (max((c["index"] for c in classes), default=-1) + 1)
            for c in classes:
                names[c["index"]] = c["raw_name"]
        return ListedImages(config.root, listing, transform, names)
    split_rows = [i.split("/", 1) for i in listing.ids]
    images = np.empty((len(listing), 28, 28), dtype=np.uint8)
    for split in {split for split, _ in split_rows}:
        at = [k for k, (s, _) in enumerate(split_rows) if s == split]
        rows = [int(split_rows[k][1]) for k in at]
        images[at] = read_idx(config.root / FASHION_FILES[split][0])[rows]
    return ArrayImages(images, listing.labels, transform)


def real_dataset(config: RealDataConfig, split: str, classes: Sequence[ClassIdentity],
                 transform: Callable, chosen: RealList | None = None,
                 ) -> ArrayImages | ListedImages:  # fmt: skip
    """The real `train` or `test` split, or the part of it `chosen` names (a subset saved
    in the run, diversynth.data.subset); labels are catalog indices."""
    listing = chosen if chosen is not None else real_listing(config, split, classes)
    return listed_dataset(config, listing, transform, classes)


def dataset_labels(dataset: ArrayImages | ListedImages) -> np.ndarray:
    """The catalog label of every image of a real dataset, without reading an image."""
    return np.asarray(dataset.labels, dtype=np.int64)

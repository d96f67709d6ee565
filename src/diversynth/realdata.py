"""The real labelled images: Fashion-MNIST's IDX files or an ImageFolder, with labels in
the class catalog's index order. The classes stage reads exemplars from here and the train
and evaluate stages their splits."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import default_loader

from diversynth.config import RealDataConfig
from diversynth.errors import UsageError

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


def _open_idx(path: Path) -> BinaryIO:
    """An IDX file (the MNIST file format), plain or gzipped, opened for reading."""
    if not path.exists() and path.with_suffix(".gz").exists():
        path = path.with_suffix(".gz")
    if not path.exists():
        path = path.with_name(path.name + ".gz")
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # type: ignore[return-value]


def idx_length(path: Path) -> int:
    """The number of items in an IDX file, from its header alone."""
    with _open_idx(path) as handle:
        return int.from_bytes(handle.read(8)[4:8], "big")


def read_idx(path: Path) -> np.ndarray:
    """An IDX array.

    torchvision's FashionMNIST wants its own folder layout and unpacks into it; Debian's
    read-only /usr/share copy is read here in place instead.
    """
    with _open_idx(path) as handle:
        data = handle.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def catalog_to_dataset_labels(class_names: list[str], dataset_names: list[str]) -> list[int]:
    """For each catalog class (in index order), the dataset's label for it."""
    lookup = {name.casefold(): i for i, name in enumerate(dataset_names)}
    missing = [name for name in class_names if name.casefold() not in lookup]
    if missing:
        raise DataError(
            f"data: classes not in the real dataset: {missing} (it has {dataset_names})"
        )
    return [lookup[name.casefold()] for name in class_names]


class ArrayImages(Dataset):
    """Images held as a uint8 array (N, H, W) with catalog-index labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable):
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

    def __init__(self, root: Path, classes: list[dict[str, Any]], transform: Callable,
                 require_all: bool = True):  # fmt: skip
        self._catalog = classes
        self._require_all = require_all
        super().__init__(str(root), transform=transform, allow_empty=not require_all)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        folders = {e.name.casefold(): e.name for e in os.scandir(directory) if e.is_dir()}
        mapping = {}
        for cls in self._catalog:
            for key in (cls.get("wnid"), cls["raw_name"], str(cls["index"])):
                if key and key.casefold() in folders:
                    mapping[folders[key.casefold()]] = cls["index"]
                    break
        missing = [c["raw_name"] for c in self._catalog if c["index"] not in mapping.values()]
        if not mapping or (missing and self._require_all):
            raise DataError(f"data.root: no folder in {directory} for classes {missing[:5]}")
        return sorted(mapping), mapping


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


def real_listing(config: RealDataConfig, split: str, classes: list[dict[str, Any]]) -> RealList:
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
        raise DataError(f"data.root: {str(config.root)!r} has no {folder.name}/ folder")
    samples = CatalogImageFolder(folder, classes, transform=None).samples  # type: ignore[arg-type]
    kept = [samples[i] for i in _every_kth(len(samples), limit)]
    return RealList([Path(path).relative_to(config.root).as_posix() for path, _ in kept],
                    np.array([label for _, label in kept], dtype=np.int64))  # fmt: skip


class ListedImages(Dataset):
    """The image files a RealList names, under data.root."""

    def __init__(self, root: Path, listing: RealList, transform: Callable):
        self.root, self.ids, self.transform = root, listing.ids, transform
        self.labels = listing.labels

    def __len__(self) -> int:
        return len(self.ids)

    def raw(self, i: int) -> bytes:
        """Image i's file, undecoded."""
        return (self.root / self.ids[i]).read_bytes()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(default_loader(str(self.root / self.ids[i]))), int(self.labels[i])


def listed_dataset(config: RealDataConfig, listing: RealList, transform: Callable) -> Dataset:
    """The images of a listing (a saved subset, a test list) as a dataset."""
    if config.format != "fashion-mnist":
        return ListedImages(config.root, listing, transform)
    split_rows = [i.split("/", 1) for i in listing.ids]
    images = np.empty((len(listing), 28, 28), dtype=np.uint8)
    for split in {split for split, _ in split_rows}:
        at = [k for k, (s, _) in enumerate(split_rows) if s == split]
        rows = [int(split_rows[k][1]) for k in at]
        images[at] = read_idx(config.root / FASHION_FILES[split][0])[rows]
    return ArrayImages(images, listing.labels, transform)


def real_dataset(config: RealDataConfig, split: str, classes: list[dict[str, Any]],
                 transform: Callable, chosen: RealList | None = None) -> Dataset:  # fmt: skip
    """The real `train` or `test` split, or the part of it `chosen` names (a subset saved
    in the run, diversynth.real_subset); labels are catalog indices."""
    listing = chosen if chosen is not None else real_listing(config, split, classes)
    return listed_dataset(config, listing, transform)


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """The catalog label of every image of a real dataset, without reading an image."""
    return np.asarray(dataset.labels, dtype=np.int64)  # type: ignore[attr-defined]

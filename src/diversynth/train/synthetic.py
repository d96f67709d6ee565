"""The run's synthetic images as a map-style dataset: random access into the shards.

webdataset streams shards in order, which suits one pass but not an exact resume or a
fixed subset: a stream cannot seek to "sample 1,234,567 of the shuffled order". The
manifest holds each JPEG's byte offset in its shard (recorded when the shard was written),
so any worker reads any image with one seek, and no process reads the shards' tar headers,
which would mean touching every shard once per process. Runs made before the manifest
had offsets fall back to reading the headers.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from diversynth.artifacts.manifest import read_manifest
from diversynth.artifacts.shards import jpeg_locations
from diversynth.errors import DiversynthError


class SyntheticDataError(DiversynthError, ValueError):
    pass


def select_images(rows: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """`count` images spread evenly over the classes: round-robin, each class in key order."""
    by_class: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: r["key"]):
        by_class[row["class_index"]].append(row)
    queues = [by_class[c] for c in sorted(by_class)]
    picked: list[dict[str, Any]] = []
    depth = 0
    while len(picked) < count:
        for queue in queues:
            if depth < len(queue) and len(picked) < count:
                picked.append(queue[depth])
        depth += 1
    return sorted(picked, key=lambda r: r["key"])


def synthetic_count(available: int, num_real: int, scale: float | None) -> int:
    """How many synthetic images `train.synthetic_scale` asks for; all of them when None."""
    if scale is None:
        return available
    wanted = math.floor(scale * num_real + 0.5)
    if wanted > available:
        raise SyntheticDataError(
            f"train.synthetic_scale: {scale:g} x {num_real} real images needs {wanted} "
            f"synthetic images; the run's shards hold {available} (generate more, or lower "
            "the scale)"
        )
    return wanted


class ShardImages(Dataset):
    """(image tensor, class index) for each selected manifest row, read from its shard."""

    def __init__(self, shard_folder: Path, rows: list[dict[str, Any]], transform: Callable):
        self.folder, self.transform = shard_folder, transform
        where = {
            row["key"]: (row["jpg_offset"], row["jpg_size"])
            for row in rows
            if row.get("jpg_offset") is not None
        }
        for shard in sorted({row["shard"] for row in rows if row["key"] not in where}):
            if self._path(shard).is_file():  # a run from before the manifest had offsets
                where.update(jpeg_locations(self._path(shard)))
        missing = [row["key"] for row in rows if row["key"] not in where]
        if missing:
            raise SyntheticDataError(
                f"train: {len(missing)} images of manifest.parquet are not in their shards "
                f"(first: {missing[0]}); rerun the generate stage"
            )
        self.items = [(row["shard"], *where[row["key"]], row["class_index"]) for row in rows]
        ends: dict[str, int] = defaultdict(int)
        for shard, offset, size, _ in self.items:
            ends[shard] = max(ends[shard], offset + size)
        short = [shard for shard, end in sorted(ends.items()) if self._size(shard) < end]
        if short:
            raise SyntheticDataError(
                f"train: shards/{short[0]}.tar ({len(short)} shards in all) is missing or "
                "shorter than manifest.parquet says; rerun the generate stage"
            )  # fmt: skip
        self._files: dict[str, IO[bytes]] = {}  # opened lazily: one set per worker process

    def _path(self, shard: str) -> Path:
        return self.folder / f"{shard}.tar"

    def _size(self, shard: str) -> int:
        """The shard's size in bytes; -1 when it is missing."""
        try:
            return self._path(shard).stat().st_size
        except FileNotFoundError:
            return -1

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        shard, offset, size, label = self.items[i]
        handle = self._files.get(shard)
        if handle is None:
            handle = self._files[shard] = self._path(shard).open("rb")
        handle.seek(offset)
        image = Image.open(io.BytesIO(handle.read(size))).convert("RGB")
        return self.transform(image), label

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": {}}  # file handles stay in their process


def synthetic_images(run_root: Path, num_real: int, scale: float | None,
                     transform: Callable) -> ShardImages | None:  # fmt: skip
    """The synthetic images training uses, or None when there are none (or scale is 0)."""
    manifest = run_root / "manifest.parquet"
    if scale == 0 or not manifest.is_file():
        if scale:
            raise SyntheticDataError(
                f"train.synthetic_scale: {scale:g} needs synthetic images, but the run has no "
                "manifest.parquet (run the generate stage)"
            )
        return None
    table = read_manifest(manifest)
    columns = ["key", "shard", "class_index", "jpg_offset", "jpg_size"]
    rows = table.select([c for c in columns if c in table.column_names]).to_pylist()
    count = synthetic_count(len(rows), num_real, scale)
    if count == 0:
        return None
    return ShardImages(run_root / "shards", select_images(rows, count), transform)

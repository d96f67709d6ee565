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
import os
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image
from torch.utils.data import Dataset

from diversynth.config import STRATEGIES
from diversynth.data.images import OneLineFromWorkers, read_problem
from diversynth.errors import DiversynthError
from diversynth.run.artifacts.manifest import read_manifest
from diversynth.run.artifacts.shards import jpeg_locations
from diversynth.run.rundir import RunDir


class SyntheticDataError(DiversynthError, ValueError):
    pass


class DamagedShardError(OneLineFromWorkers, SyntheticDataError):
    """A synthetic image that cannot be read: its shard was changed after it was written
    (one line, also from a loader worker)."""


def _places(groups: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Each element's (depth in its group + 1/2) / its group's size, depth counted along
    `order` (the element positions in the order they are taken)."""
    taken = order[np.argsort(groups[order], kind="stable")]  # group-major, `order` within
    grouped = groups[taken]
    depth = np.empty(len(groups), dtype=np.int64)
    depth[taken] = np.arange(len(groups)) - np.searchsorted(grouped, grouped)
    sizes = np.bincount(groups)[groups]
    # correctly rounded divisions: equal fractions give equal floats on every CPU
    return (2 * depth + 1) / (2 * sizes)


def select_images(classes: np.ndarray, count: int,
                  strategies: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Positions of `count` images spread over the classes in proportion to the images
    each has (its budget, prompts.budget), ascending. An image's place is (its depth in its
    class + 1/2) / the class's count, ties to the lower class: with equal counts that is
    round-robin over the classes (the first of every class, then the second, ...).

    Within a class the images are taken in the order given (the manifest's key order), or
    with `strategies` (a small integer per image) round-robin over the strategies in
    proportion to each one's images in that class, by the same rule. The place of an image
    does not depend on `count`, so a smaller count picks a subset of a larger one's: the
    images of synthetic_scale 1 are among those of scale 2."""
    order = np.arange(len(classes))
    if strategies is not None and len(classes):
        pairs = classes.astype(np.int64) * (int(strategies.max()) + 1) + strategies
        order = np.lexsort((strategies, _places(pairs, order)))
    return np.sort(np.lexsort((classes, _places(classes, order)))[:count])


def synthetic_count(available: int, num_real: int, scale: float | None,
                    strategies: Sequence[str] | None = None) -> int:  # fmt: skip
    """How many synthetic images `train.synthetic_scale` asks for; all of them when None."""
    if scale is None:
        return available
    wanted = math.floor(scale * num_real + 0.5)
    if wanted > available:
        of = f" of strategies {', '.join(strategies)}" if strategies else ""
        raise SyntheticDataError(
            f"train.synthetic_scale: {scale:g} x {num_real} real images needs {wanted} "
            f"synthetic images{of}; the run's shards hold {available} (generate more, or "
            "lower the scale)"
        )
    return wanted


def strategy_codes(names: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Each image's strategy as a small integer, in the config's order of strategies."""
    return pc.index_in(names, pa.array(STRATEGIES)).to_numpy(zero_copy_only=False)


class ShardImages(Dataset):
    """(image tensor, class index) for each row of a manifest table, read from its shard.

    Each image is four numbers in numpy arrays (shard, offset, size, label): at 7.7M
    images that is 200 MB shared by every loader worker, where a tuple per image would be
    gigabytes that each forked worker's reference counting slowly copies."""

    def __init__(self, shard_folder: Path, rows: pa.Table, transform: Callable) -> None:
        self.folder, self.transform = shard_folder, transform
        shard = rows.column("shard").combine_chunks()
        if not pa.types.is_dictionary(shard.type):
            shard = shard.dictionary_encode()
        self.shards: list[str] = shard.dictionary.to_pylist()
        self.shard_ids = shard.indices.to_numpy(zero_copy_only=False).astype(np.int32)
        self.labels = rows.column("class_index").to_numpy().astype(np.int64)
        self.offsets, self.sizes = self._locations(rows)
        ends = np.zeros(len(self.shards), dtype=np.int64)
        np.maximum.at(ends, self.shard_ids, self.offsets + self.sizes)
        short = [name for name, end in zip(self.shards, ends.tolist(), strict=True)
                 if self._size(name) < end]  # fmt: skip
        if short:
            raise SyntheticDataError(
                f"train: shards/{sorted(short)[0]}.tar ({len(short)} shards in all) is missing "
                "or shorter than manifest.parquet says; rerun the generate stage"
            )  # fmt: skip
        self._files: dict[str, IO[bytes]] = {}  # opened lazily: one set per worker process

    def _locations(self, rows: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """Each JPEG's byte offset and size in its shard: from the manifest, or for a run
        made before the manifest had them, from its shards' tar headers."""
        names = rows.column_names
        if "jpg_offset" in names and rows.column("jpg_offset").null_count == 0:
            return (rows.column("jpg_offset").to_numpy().astype(np.int64),
                    rows.column("jpg_size").to_numpy().astype(np.int64))  # fmt: skip
        where: dict[str, tuple[int, int]] = {}
        for shard in sorted(self.shards):
            if self._path(shard).is_file():
                where.update(jpeg_locations(self._path(shard)))
        keys = rows.column("key").to_pylist()
        missing = [key for key in keys if key not in where]
        if missing:
            raise SyntheticDataError(
                f"train: {len(missing)} images of manifest.parquet are not in their shards "
                f"(first: {missing[0]}); rerun the generate stage"
            )
        located = np.array([where[key] for key in keys], dtype=np.int64).reshape(-1, 2)
        return located[:, 0].copy(), located[:, 1].copy()

    def _path(self, shard: str) -> Path:
        return self.folder / f"{shard}.tar"

    def _size(self, shard: str) -> int:
        """The shard's size in bytes; -1 when it is missing."""
        try:
            return self._path(shard).stat().st_size
        except FileNotFoundError:
            return -1

    def __len__(self) -> int:
        return len(self.labels)

    def raw(self, i: int) -> bytes:
        """Image i's JPEG file, undecoded."""
        shard = self.shards[self.shard_ids[i]]
        handle = self._files.get(shard)
        if handle is None:
            handle = self._files[shard] = self._path(shard).open("rb")
        # a positional read: workers forked after this process read a shard share its file
        # position, which seek-then-read would race on
        return os.pread(handle.fileno(), int(self.sizes[i]), int(self.offsets[i]))

    def _key(self, i: int) -> str | None:
        """Image i's sample key, from the tar header before its JPEG (the USTAR header
        the shard writer wrote); None where that header is damaged too."""
        offset = int(self.offsets[i])
        try:
            with self._path(self.shards[self.shard_ids[i]]).open("rb") as handle:
                header = os.pread(handle.fileno(), tarfile.BLOCKSIZE, offset - tarfile.BLOCKSIZE)
            name = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape").name
        except (OSError, ValueError, tarfile.TarError):
            return None
        return name.rpartition(".")[0] or None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            image = Image.open(io.BytesIO(self.raw(i))).convert("RGB")
        except MemoryError:
            raise
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError...
            shard = self.shards[self.shard_ids[i]]
            key = self._key(i)
            sample = f"sample {key!r}" if key else f"the image at byte {int(self.offsets[i])}"
            run = self.folder.parent
            raise DamagedShardError(
                f"train: shards/{shard}.tar, {sample}: cannot be read ({read_problem(exc)}); "
                f"the shard changed after the generate stage wrote it: `diversynth verify "
                f"--run {run}` names every damaged file, and `diversynth run` makes them again"
            ) from None
        return self.transform(image), int(self.labels[i])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": {}}  # file handles stay in their process


def synthetic_images(run: RunDir, num_real: int, scale: float | None, transform: Callable,
                     exclude: set[str] | None = None,
                     strategies: Sequence[str] | None = None) -> ShardImages | None:  # fmt: skip
    """The synthetic images training uses, or None when there are none (or scale is 0);
    `exclude`: keys left out (the leaks stage's); `strategies`: the only strategies used
    (train.strategies; None: all)."""
    manifest = run.manifest
    if scale == 0 or not manifest.is_file():
        if scale:
            raise SyntheticDataError(
                f"train.synthetic_scale: {scale:g} needs synthetic images, but the run has no "
                "manifest.parquet (run the generate stage)"
            )
        return None
    table = read_manifest(manifest, ["key", "shard", "class_index", "strategy", "jpg_offset",
                                     "jpg_size"])  # fmt: skip
    if exclude:
        keep = pc.invert(pc.is_in(table.column("key"), pa.array(sorted(exclude))))
        table = table.filter(keep)
    if strategies:
        table = table.filter(pc.is_in(table.column("strategy"), pa.array(strategies)))
        if table.num_rows == 0:
            raise SyntheticDataError(
                f"train.strategies: the run's shards hold no image of {', '.join(strategies)} "
                "(give that strategy a share in prompts.shares, or set train.synthetic_scale: 0)"
            )
    count = synthetic_count(table.num_rows, num_real, scale, strategies)
    if count == 0:
        return None
    classes = table.column("class_index").to_numpy()
    if count < table.num_rows:
        table = table.take(select_images(classes, count, strategy_codes(table.column("strategy"))))
    return ShardImages(run.shards, table, transform)

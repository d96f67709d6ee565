"""Shard files on disk: a WebDataset tar (`key.jpg` + `key.json`), its manifest rows
(`NAME.rows.parquet`) and a small stats file.

The tar is written under a temp name and renamed when whole; the rows follow, then the
stats JSON, written atomically last, marks the shard done (as img2dataset does). On restart
the shard files and temp files of shards a plan of the run named, when unfinished or no
longer planned, are leftovers and removed; any other file is left as it is. The rows are
kept apart from the stats so that what asks for a shard's count, time or hash (`generate
--status`, the report) reads a few hundred bytes, and the manifest is a concatenation of
column files (runs made before keep their rows in the stats file).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import tarfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from PIL import Image

from diversynth.run.artifacts.manifest import SCHEMA, ShardRow, read_manifest, write_rows
from diversynth.run.rundir import INFO_FILE, PLAN_FILE, sha256_file, write_json

# Fixed tar member mtime: the same images give byte-identical shards on every run. An int:
# a float mtime costs a PAX header (1 KB) per member.
TAR_MTIME = 0


ROWS_SUFFIX = "rows.parquet"


def shard_paths(folder: Path, name: str) -> tuple[Path, Path]:
    return folder / f"{name}.tar", folder / f"{name}.json"


def rows_path(folder: Path, name: str) -> Path:
    return folder / f"{name}.{ROWS_SUFFIX}"


def is_done(folder: Path, name: str) -> bool:
    tar, stats = shard_paths(folder, name)
    return tar.is_file() and stats.is_file()


def remove_shard(folder: Path, name: str) -> None:
    """Remove a shard's files, the stats file first (a kill in between leaves a tar that is
    no longer done, which the next start removes)."""
    tar, stats = shard_paths(folder, name)
    stats.unlink(missing_ok=True)
    tar.unlink(missing_ok=True)
    rows_path(folder, name).unlink(missing_ok=True)


# The files of shard NAME, and the temp files they are written under: ShardWriter's
# NAME.tar.[<writer tag>-]<12 hex>.tmp, rundir.atomic_open's .NAME.json.<random>.tmp (and
# the plan's)
_SHARD_FILE = re.compile(r"^(\d{6})\.(tar|json|rows\.parquet)$")
_SHARD_TEMP = re.compile(
    r"^(\d{6})\.tar\.(?:([0-9a-f]{1,16})-)?[0-9a-f]{12}\.tmp$"
    r"|^\.(\d{6})\.(json|rows\.parquet)\.\w+\.tmp$"
)
_PLAN_TEMP = re.compile(rf"^\.({re.escape(PLAN_FILE)}|{re.escape(INFO_FILE)})\.\w+\.tmp$")


@dataclass
class Leftovers:
    removed: int = 0  # temp files, unfinished shards, shards no longer planned
    foreign: list[str] = field(default_factory=list)  # files no plan of the run names


def clean_leftovers(folder: Path, planned: set[str], known: set[str]) -> Leftovers:
    """Remove what the run provably wrote and no longer needs: temp files and unfinished
    or unplanned shard files of the shards in `known` (those a plan of this run, the new
    one or the one on disk, named). Other files are the user's: listed, never touched."""
    found = Leftovers()
    for entry in os.scandir(folder):
        name = entry.name
        if not entry.is_file(follow_symlinks=False) or name in (PLAN_FILE, INFO_FILE):
            continue
        shard, temp = _SHARD_FILE.match(name), _SHARD_TEMP.match(name)
        stem = (shard and shard[1]) or (temp and (temp[1] or temp[3]))
        ours = stem in known if stem else bool(_PLAN_TEMP.match(name))
        if not ours:
            found.foreign.append(name)
        elif temp or not stem or not (stem in planned and is_done(folder, stem)):
            os.unlink(entry.path)
            found.removed += 1
    found.foreign.sort()
    return found


def temp_files(folder: Path) -> list[str]:
    """The temp files in a shard folder: each left by a process that stopped while writing
    (a lost node, a kill). Not damage: the next run of the stage removes them."""
    if not folder.is_dir():
        return []
    return sorted(entry.name for entry in os.scandir(folder)
                  if _SHARD_TEMP.match(entry.name) or _PLAN_TEMP.match(entry.name))  # fmt: skip


def written_by(folder: Path, tag: str) -> list[str]:
    """The shards whose tar a writer with this tag (`ShardWriter(tag=...)`) had open: what
    a worker that is gone was making."""
    if not folder.is_dir():
        return []
    found = (_SHARD_TEMP.match(entry.name) for entry in os.scandir(folder))
    return sorted({m.group(1) for m in found if m and m.group(1) and m.group(2) == tag})


def encode_jpeg(image: Image.Image, quality: int, store_size: int | None) -> bytes:
    image = image.convert("RGB")
    if store_size and min(image.size) != store_size:
        scale = store_size / min(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def jpeg_locations(tar_path: Path) -> dict[str, tuple[int, int]]:
    """Key -> (byte offset, size) of each sample's JPEG in a shard, from the tar headers."""
    with tarfile.open(tar_path) as tar:
        return {
            member.name.partition(".")[0]: (member.offset_data, member.size)
            for member in tar
            if member.name.partition(".")[2] == "jpg"
        }


class ShardWriter:
    """Writes one shard: samples go to `NAME.tar.<random>.tmp`, renamed to `NAME.tar` on
    commit. The temp name is unique so that a worker of a killed run that is still finishing
    the same shard never writes into the file of the run that replaced it.

    Members are written with tarfile itself, as webdataset's TarWriter does (same names,
    owner and mode) but in USTAR format, and each JPEG's offset is noted as it is written,
    so no pass over the headers is needed afterwards (at ImageNet scale that pass took as
    long as writing)."""

    def __init__(self, folder: Path, name: str, tag: str = "") -> None:
        """`tag` (up to 16 hex digits) marks the temp file as this writer's: a ray worker
        tags it with its node, so that a lost node's shards in progress can be named."""
        self.tar_path, self.stats_path = shard_paths(folder, name)
        prefix = f"{tag}-" if tag else ""
        self.tmp_path = folder / f"{name}.tar.{prefix}{uuid.uuid4().hex[:12]}.tmp"
        self._file = self.tmp_path.open("wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self._where: dict[str, tuple[int, int]] = {}
        self.count = 0

    def _add(self, name: str, data: bytes) -> int:
        """Append a member; the offset of its data."""
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o444
        info.uname = info.gname = "bigdata"
        self._tar.addfile(info, io.BytesIO(data))
        padded = math.ceil(len(data) / tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        return self._tar.offset - padded  # the data ends the tar so far, padded to a block

    def write(self, key: str, jpeg: bytes, meta: dict[str, Any]) -> None:
        self._where[key] = (self._add(f"{key}.jpg", jpeg), len(jpeg))
        self._add(f"{key}.json", json.dumps(meta, sort_keys=True, ensure_ascii=False).encode())
        self.count += 1

    def _finish(self) -> None:
        """Write the tar's end and put it on disk, once."""
        if not self._file.closed:
            self._tar.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def close(self) -> dict[str, tuple[int, int]]:
        """Finish the tar (still under its temp name) and return where each JPEG lies in it
        (byte offset, size), so that training can seek to any image without reading a
        shard's headers."""
        self._finish()
        return dict(self._where)

    def commit(self, stats: dict[str, Any], rows: list[ShardRow] | None = None) -> dict[str, Any]:
        """Rename the finished tar to its final name, write its manifest rows; the stats
        file then marks it done."""
        self._finish()
        stats = {**stats, "count": self.count, "sha256": sha256_file(self.tmp_path)}
        os.replace(self.tmp_path, self.tar_path)
        if rows is not None:
            write_rows(rows_path(self.tar_path.parent, self.tar_path.stem), rows)
        write_json(self.stats_path, stats)
        return stats

    def abort(self) -> None:
        try:
            self._tar.close()
        except (OSError, ValueError):
            pass  # the shard is being thrown away; a failed tar footer does not matter
        self._file.close()
        self.tmp_path.unlink(missing_ok=True)


def read_stats(folder: Path, name: str) -> dict[str, Any]:
    return json.loads(shard_paths(folder, name)[1].read_text())


def read_rows(folder: Path, name: str, stats: dict[str, Any]) -> pa.Table:
    """A finished shard's manifest rows, in key order (from the stats file in runs made
    before rows had a file of their own)."""
    path = rows_path(folder, name)
    if path.is_file():
        return read_manifest(path)
    return pa.Table.from_pylist(stats.get("rows", []), schema=SCHEMA).sort_by("key")

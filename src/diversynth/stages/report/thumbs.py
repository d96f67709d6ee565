"""Thumbnails cut straight from the shards, made once and kept between report builds.

A thumbnail lives at `thumbs/SHARD_SHA/KEY.jpg`, where SHARD_SHA begins the sha256 of the
shard it came from: a regenerated shard with other pixels gets new thumbnails, an unchanged
one keeps its old ones, and folders of shards that no longer exist are removed. Only shards
holding a missing thumbnail are opened; each JPEG is read with one seek to the offset the
manifest records (a run made before the manifest had offsets reads its shards' members).
"""

from __future__ import annotations

import io
import os
import tarfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from diversynth.run.artifacts.shards import read_stats
from diversynth.run.rundir import RunDir
from diversynth.stages.report.owned import SiteFiles

SHA_CHARS = 16


def thumbnail_paths(run: RunDir, rows: list[dict[str, Any]]) -> dict[str, str]:
    """key -> path of its thumbnail, relative to the site root."""
    shas: dict[str, str] = {}
    paths = {}
    for row in rows:
        shard = row["shard"]
        if shard not in shas:
            shas[shard] = read_stats(run.shards, shard)["sha256"][:SHA_CHARS]
        paths[row["key"]] = f"thumbs/{shas[shard]}/{row['key']}.jpg"
    return paths


def make_thumbnails(run: RunDir, rows: list[dict[str, Any]], owned: SiteFiles,
                    size: int) -> dict[str, str]:  # fmt: skip
    """Write the missing thumbnails for these manifest rows into the site; return key ->
    relative path. Thumbnails of shards no longer in the run are removed (only those)."""
    site = owned.site
    paths = thumbnail_paths(run, rows)
    missing: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if not (site / paths[row["key"]]).is_file():
            missing[row["shard"]].append(row)
    for shard, wanted in sorted(missing.items()):
        for key, jpeg in _jpegs(run.shards / f"{shard}.tar", wanted):
            image = Image.open(io.BytesIO(jpeg)).convert("RGB")
            image.thumbnail((size, size))
            _save(image, site / paths[key])
    keep = {p.split("/")[1] for p in paths.values()}
    folder = site / "thumbs"
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        if entry.name not in keep:
            owned.remove_tree(entry) if entry.is_dir() else owned.remove(entry)
    return paths


def _jpegs(tar_path: Path, rows: list[dict[str, Any]]) -> Iterator[tuple[str, bytes]]:
    """(key, JPEG bytes) of these rows of one shard."""
    if all(row.get("jpg_offset") is not None for row in rows):
        with tar_path.open("rb") as handle:
            for row in sorted(rows, key=lambda r: r["jpg_offset"]):
                handle.seek(row["jpg_offset"])
                yield row["key"], handle.read(row["jpg_size"])
        return
    keys = {row["key"] for row in rows}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            if ext == "jpg" and key in keys:
                extracted = tar.extractfile(member)
                assert extracted is not None
                yield key, extracted.read()


def _save(image: Image.Image, path: Path) -> None:
    """Temp name, then rename: an interrupted build never leaves a half thumbnail that a
    later build would take as made. No fsync per file (thousands of them); a thumbnail
    lost to a power cut is simply made again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="JPEG", quality=85)
    os.replace(tmp, path)

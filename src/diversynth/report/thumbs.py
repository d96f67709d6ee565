"""Thumbnails cut straight from the shards, made once and kept between report builds.

A thumbnail lives at `thumbs/SHARD_SHA/KEY.jpg`, where SHARD_SHA begins the sha256 of the
shard it came from: a regenerated shard with other pixels gets new thumbnails, an unchanged
one keeps its old ones, and folders of shards that no longer exist are removed. Only shards
holding a missing thumbnail are opened, and each is read once, member by member.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from collections import defaultdict
from pathlib import Path

from PIL import Image

from diversynth.artifacts.shards import read_stats
from diversynth.rundir import RunDir

SHA_CHARS = 16


def thumbnail_paths(run: RunDir, rows: list[dict]) -> dict[str, str]:
    """key -> path of its thumbnail, relative to the site root."""
    shas: dict[str, str] = {}
    paths = {}
    for row in rows:
        shard = row["shard"]
        if shard not in shas:
            shas[shard] = read_stats(run.shards, shard)["sha256"][:SHA_CHARS]
        paths[row["key"]] = f"thumbs/{shas[shard]}/{row['key']}.jpg"
    return paths


def make_thumbnails(run: RunDir, rows: list[dict], site: Path, size: int) -> dict[str, str]:
    """Write the missing thumbnails for these manifest rows; return key -> relative path."""
    paths = thumbnail_paths(run, rows)
    missing: dict[str, dict[str, Path]] = defaultdict(dict)
    for row in rows:
        target = site / paths[row["key"]]
        if not target.is_file():
            missing[row["shard"]][row["key"]] = target
    for shard, targets in sorted(missing.items()):
        with tarfile.open(run.shards / f"{shard}.tar") as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if ext != "jpg" or key not in targets:
                    continue
                handle = tar.extractfile(member)
                assert handle is not None
                image = Image.open(io.BytesIO(handle.read())).convert("RGB")
                image.thumbnail((size, size))
                _save(image, targets[key])
    _remove_stale(site / "thumbs", {p.split("/")[1] for p in paths.values()})
    return paths


def _save(image: Image.Image, path: Path) -> None:
    """Temp name, then rename: an interrupted build never leaves a half thumbnail that a
    later build would take as made. No fsync per file (thousands of them); a thumbnail
    lost to a power cut is simply made again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="JPEG", quality=85)
    os.replace(tmp, path)


def _remove_stale(folder: Path, keep: set[str]) -> None:
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name not in keep:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

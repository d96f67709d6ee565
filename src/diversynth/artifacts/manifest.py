"""manifest.parquet: one row per image, gathered from the shard stats files."""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

import pyarrow as pa
import pyarrow.parquet as pq

from diversynth.rundir import DAMAGED_HINT, RunFileError, atomic_open


class ManifestRow(TypedDict):
    """One image: a row of manifest.parquet, and of its shard's stats file."""

    key: str
    shard: str
    class_index: int
    prompt_id: int
    image_index: int
    strategy: str
    seed: int
    attempt: int  # 0: the first image made; k: made again k times (clip_threshold, safety)
    clip_prompt: float | None
    clip_class: float | None
    flags: list[str]  # "below_clip_threshold"
    jpg_offset: int | None
    jpg_size: int | None


SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("class_index", pa.int32()),
        ("prompt_id", pa.int64()),
        ("image_index", pa.int32()),
        ("strategy", pa.string()),
        ("seed", pa.int64()),
        ("attempt", pa.int32()),
        # float64: the manifest holds exactly the scores clip_threshold was compared with
        ("clip_prompt", pa.float64()),
        ("clip_class", pa.float64()),
        ("flags", pa.list_(pa.string())),
        # where the JPEG lies in its shard: training reads it with one seek (null in runs
        # made before these columns existed: training then reads the shard's tar headers)
        ("jpg_offset", pa.int64()),
        ("jpg_size", pa.int64()),
    ]
)


assert set(SCHEMA.names) == set(ManifestRow.__annotations__), "one manifest row, two forms"


def write_manifest(path: Path, rows: list[ManifestRow]) -> None:
    rows = sorted(rows, key=lambda row: row["key"])
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    with atomic_open(path, "wb") as handle:
        pq.write_table(table, handle)


def read_manifest(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise RunFileError(
            f"{path}: not a readable manifest ({str(exc)[:200]}): the file is damaged; "
            + DAMAGED_HINT
        ) from None

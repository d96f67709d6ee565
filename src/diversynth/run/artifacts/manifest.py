"""manifest.parquet: one row per image, gathered from the shard stats files.

Written a shard at a time and read as columns: at 6x ImageNet (7.7M images) a list of
per-row dicts would take gigabytes; a shard's rows as Arrow columns take a few hundred
kilobytes, and the parquet file holds the whole run in a few hundred megabytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TypedDict

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from diversynth.run.rundir import DAMAGED_HINT, RunFileError, atomic_open


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


class ShardRow(ManifestRow, total=False):
    """A row of a shard's rows file: the manifest's columns and the image's CLIP embedding
    (unit length, float16: 1 KB an image at 512 dimensions, kept out of the manifest, which
    every reader loads whole), for the image diversity and leakage checks. Null where CLIP
    did not score the image, and absent in shards made before it was kept."""

    clip_image: list[float] | None


ROWS_SCHEMA = SCHEMA.append(pa.field("clip_image", pa.list_(pa.float16())))

# rows per parquet row group: a few MB of columns, written and read as one
ROW_GROUP = 1 << 17


def write_rows(path: Path, rows: list[ShardRow]) -> None:
    """One shard's rows, in key order, as a parquet file (the manifest's schema, and each
    image's CLIP embedding)."""
    table = pa.Table.from_pylist(sorted(rows, key=lambda row: row["key"]), schema=ROWS_SCHEMA)
    with atomic_open(path, "wb") as handle:
        pq.write_table(table, handle)


def write_manifest(path: Path, shards: Iterable[pa.Table]) -> int:
    """Write each shard's rows in turn (each in key order; shards hold ascending prompt
    ranges, so each shard's rows follow the previous shard's); the row count. Rows go out
    in row groups of about ROW_GROUP rows, whatever the shard size."""
    count, last, pending = 0, "", []
    with atomic_open(path, "wb") as handle, pq.ParquetWriter(handle, SCHEMA) as writer:
        for table in shards:
            if not len(table):
                continue
            table = table.select(SCHEMA.names).cast(SCHEMA)
            keys = table.column("key")
            if keys[0].as_py() <= last:
                raise ValueError(f"manifest: shard rows out of key order at {keys[0].as_py()!r}")
            pending.append(table)
            count, last = count + len(table), keys[-1].as_py()
            if sum(len(t) for t in pending) >= ROW_GROUP:
                writer.write_table(pa.concat_tables(pending), ROW_GROUP)
                pending = []
        if pending or not count:
            writer.write_table(pa.concat_tables(pending or [SCHEMA.empty_table()]), ROW_GROUP)
    return count


def value_counts(column: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    """How often each string of a column occurs (dictionary-encoded columns too)."""
    counts = pc.value_counts(column.cast(pa.string())).to_pylist()
    return {row["values"]: row["counts"] for row in counts if row["values"]}


def image_flags(table: pa.Table) -> dict[str, int]:
    """How many of the rows were made again (attempt > 0, under "regenerated") and carry
    each flag."""
    regenerated = pc.sum(pc.greater(table.column("attempt"), 0)).as_py() or 0
    return {"regenerated": regenerated, **value_counts(pc.list_flatten(table.column("flags")))}


def read_manifest(path: Path, columns: list[str] | None = None) -> pa.Table:
    """The manifest's rows in key order (`columns`: only these; those a manifest of an
    older run lacks are left out). `shard` and `strategy` come dictionary-encoded:
    a few distinct strings, however many rows."""
    try:
        if columns is not None:
            present = set(pq.read_schema(path).names)
            columns = [c for c in columns if c in present]
        return pq.read_table(path, columns=columns, read_dictionary=["shard", "strategy"])
    except (pa.ArrowException, OSError) as exc:
        raise RunFileError(
            f"{path}: not a readable manifest ({str(exc)[:200]}): the file is damaged; "
            + DAMAGED_HINT
        ) from None

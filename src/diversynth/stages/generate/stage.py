"""The `generate` stage: prompts.jsonl -> shards/NNNNNN.{tar,json} + manifest.parquet.

Resumable at shard granularity. `shards/plan.json` records the stage fingerprint the
shards were made for and, per shard, a digest of everything its bytes depend on (the
generate settings, the run seed, its own prompts and their class names). On a rerun a
finished shard whose digest is unchanged is kept, whatever else changed: a new name for one
class remakes only the shards holding that class's prompts. The rest are discarded and made
again; `--force` discards all. Each stats file records the digest its shard was made for:
a shard whose stats name other inputs than the plan (committed by a worker of an earlier
run that outlived its killed driver) is made again before the manifest is written.
"""

from __future__ import annotations

import json
import math
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image
from rich.markup import escape

from diversynth.config import GenerateConfig, RunConfig
from diversynth.errors import DiversynthError, PartialStage
from diversynth.models.diversity import print_diversity
from diversynth.run.artifacts.manifest import image_flags, write_manifest
from diversynth.run.artifacts.records import PromptRecord, read_classes, read_prompts
from diversynth.run.artifacts.shard_plan import ShardSpec, plan_shards, planned_shards
from diversynth.run.artifacts.shards import (
    clean_leftovers,
    encode_jpeg,
    is_done,
    read_rows,
    read_stats,
    remove_shard,
    rows_path,
    shard_paths,
)
from diversynth.run.progress import console, progress_bar
from diversynth.run.provenance import check_kept_work, made_with
from diversynth.run.rundir import RunDir, Timer, digest_json, sha256_file, write_json
from diversynth.stages.declaration import Estimate
from diversynth.stages.generate.engines import Engine, open_engine
from diversynth.stages.generate.image_diversity import ImageDiversity


class GenerateError(DiversynthError):
    pass


def shard_inputs(
    config: RunConfig,
    settings: str,
    shards: list[ShardSpec],
    prompts: list[PromptRecord],
    names: dict[int, str],
) -> dict[str, str]:
    """Per shard, a digest of what its bytes depend on: the stage's settings (its config
    sections and model files), the run seed (the seeds of remade images derive from it),
    the shard's prompts and the names of their classes (CLIP's class scores)."""
    digests = {}
    for shard in shards:
        mine = shard.take(prompts)
        classes = sorted({p["class_index"] for p in mine})
        digests[shard.name] = digest_json({
            "settings": settings, "seed": config.seed, "prompts": mine,
            "class_names": [[i, names[i]] for i in classes],
        })  # fmt: skip
    return digests


def _read_plan(run: RunDir, done: set[str]) -> dict[str, Any] | None:
    """The plan on disk. When it is missing or unreadable but shards are done, what each
    was made for is read back from its stats file, so that damage to one small file does
    not cost every finished shard."""
    try:
        return json.loads(run.plan.read_text())
    except (OSError, ValueError):
        pass
    inputs = {}
    for name in sorted(done):
        try:
            inputs[name] = read_stats(run.shards, name)["inputs"]
        except (OSError, ValueError, KeyError):
            continue  # made again
    return {"inputs": inputs} if inputs else None


def _named_shards(plan: dict[str, Any]) -> set[str]:
    """Every shard name a plan of this run has used: the files the run may remove."""
    return {f"{i:06d}" for i in range(plan["named"])}


def _named(plan: dict[str, Any] | None) -> int:
    """How many shard names (000000 on) a plan of this run has ever named: its files are
    the run's own, whatever the current plan (kept across plans, so that a run killed
    between writing a smaller plan and removing the shards it dropped removes them next
    time)."""
    if not plan:
        return 0
    names = [*(s.get("index", -1) + 1 for s in plan.get("shards", [])),
             *(int(name) + 1 for name in plan.get("inputs", {}) if name.isdigit())]  # fmt: skip
    return max(int(plan.get("named", 0)), *names, 0)


def recorded_tar_sha(run: RunDir, rel: str) -> str | None:
    """The sha256 a shard's stats file holds for its tar (None for other files)."""
    path = run.root / rel
    if path.suffix != ".tar":
        return None
    try:
        return read_stats(path.parent, path.stem).get("sha256")
    except (OSError, ValueError):
        return None


def discard_damaged(run: RunDir, paths: list[str]) -> None:
    """Damaged shards (tar or stats) are removed whole and made again; the manifest, plan
    and split info are rebuilt from what is kept."""
    for rel in paths:
        path = run.root / rel
        shard = path.name.partition(".")[0]
        if path.parent == run.shards and shard.isdigit():
            remove_shard(run.shards, shard)
        else:
            path.unlink(missing_ok=True)


def _unchanged(old: dict[str, Any] | None, new: dict[str, Any]) -> set[str]:
    """The shards whose files, where finished, are what the new plan would make."""
    if old is None:
        return set()
    if "inputs" not in old:  # a plan from before shards had digests of their own
        return set(new["inputs"]) if old.get("fingerprint") == new["fingerprint"] else set()
    return {name for name, digest in new["inputs"].items() if old["inputs"].get(name) == digest}


def _prepare_folder(run: RunDir, old: dict[str, Any] | None, plan: dict[str, Any],
                    shards: list[ShardSpec], stale: list[str]) -> None:  # fmt: skip
    """Discard the `stale` finished shards, remove leftovers, then record the plan (`old`
    is the one on disk). Before removing anything the plan on disk is cut down to the kept
    shards, so a run killed in between (a forced one too) discards the rest next time."""
    run.shards.mkdir(parents=True, exist_ok=True)
    if stale:
        kept = {name: digest for name, digest in plan["inputs"].items() if name not in stale}
        write_json(run.plan, {**plan, "inputs": kept})
        for name in stale:
            remove_shard(run.shards, name)
        console.print(f"  generate: discarded {len(stale)} shard(s) made for other settings "
                      "or prompts")  # fmt: skip
    leftovers = clean_leftovers(run.shards, {s.name for s in shards}, _named_shards(plan))
    removed = leftovers.removed
    if removed:
        console.print(f"  generate: removed {removed} unfinished file(s) from an earlier run")
    if leftovers.foreign:
        shown = ", ".join(leftovers.foreign[:5]) + (", ..." if len(leftovers.foreign) > 5 else "")
        console.print(f"  generate: {len(leftovers.foreign)} file(s) in shards/ that no plan of "
                      f"this run names, left as they are: {escape(shown)}")  # fmt: skip
    if stale or removed:  # both describe the shards that were there: rebuilt at the end
        run.manifest.unlink(missing_ok=True)
        run.shard_info.unlink(missing_ok=True)
    if stale or old != plan:
        write_json(run.plan, plan)


def _record_made_with(config: RunConfig, plan: dict[str, Any], old: dict[str, Any] | None,
                      kept: int, allow: bool) -> None:  # fmt: skip
    """Put what makes the shards (libraries, device, model revisions) into the plan; stop
    if the `kept` finished shards were made with something else, unless `allow`."""
    current = made_with("generate", config)
    history = list((old or {}).get("version_changes", [])) if kept else []
    if kept:
        change = check_kept_work(
            (old or {}).get("made_with"), current, f"generate: {kept} finished shard(s) were",
            "--force generate to make them all again", allow,
        )  # fmt: skip
        if change is not None:
            history.append(change)
    plan["made_with"] = current
    if history:
        plan["version_changes"] = history


def run_generate(config: RunConfig, run: RunDir, fingerprint: str, forced: bool = False,
                 max_shards: int | None = None, allow_version_change: bool = False,
                 settings: str = "") -> dict[str, Any]:  # fmt: skip
    """Generate the missing shards (at most `max_shards` of them this time); `forced`
    regenerates all of them. `settings`: the digest of the stage's settings (config
    sections and model files) each shard's digest starts from."""
    # 1. the plan: the shards, and a digest of what each one's bytes depend on
    prompts = read_prompts(run)
    classes = {c["index"]: c["name"] for c in read_classes(run)}
    shards = planned_shards(config, run, prompts)
    plan: dict[str, Any] = {
        "fingerprint": fingerprint,
        "shards": [s.__dict__ for s in shards],
        "inputs": shard_inputs(config, settings, shards, prompts, classes),
    }
    # 2. which finished shards are kept, and what is left to make
    done = {s.name for s in shards if is_done(run.shards, s.name)}
    old = _read_plan(run, done)
    plan["named"] = max(len(shards), _named(old))
    keep = set() if forced else _unchanged(old, plan)
    _record_made_with(config, plan, old, len(keep & done), allow_version_change)
    stale = [s.name for s in shards if s.name in done and s.name not in keep]
    missing = [s for s in shards if s.name not in keep or s.name not in done]
    todo = missing if max_shards is None else missing[:max_shards]
    # 3. room on the disk, the engine, then the folder (see generate/engines.py), the shards
    check_disk(config, run, todo, [s for s in shards if s.name in keep & done])
    engine = open_engine(config, classes) if todo else None
    _prepare_folder(run, old, plan, shards, stale)
    console.print(f"  generate: {len(shards) - len(missing)} of {len(shards)} shards already done")
    timer = Timer()
    generated = _make(engine, run, todo, prompts, plan["inputs"])
    if todo and len(todo) == len(missing):
        # a worker lost with its node leaves its shard's temp file; every shard is
        # committed now, so no writer of this run owns one
        lost = clean_leftovers(run.shards, {s.name for s in shards}, _named_shards(plan)).removed
        if lost:
            console.print(f"  generate: removed {lost} temp file(s) left by lost workers")
    if len(todo) < len(missing):
        left = len(missing) - len(todo)
        raise PartialStage(f"{len(shards) - left} of {len(shards)} shards done (--max-shards "
                           f"{max_shards}); run again to make the other {left}")  # fmt: skip
    # 4. the manifest, read shard by shard from the row files (a shard made for other
    # inputs than the plan's is made again, then the manifest is written once more)
    tally = _write_manifest(run, shards, plan["inputs"])
    remade = len(tally.foreign)
    if tally.foreign:
        engine = engine or open_engine(config, classes)
        generated += _remake(engine, run, tally.foreign, prompts, plan["inputs"])
        tally = _write_manifest(run, shards, plan["inputs"])
        if tally.foreign:
            raise GenerateError("generate: shards keep being overwritten with other inputs: "
                                "is another process writing to this run's shards?")  # fmt: skip
    write_json(run.shard_info, _dataset_info(config, shards, tally.counts))
    diversity = tally.diversity.summary()
    if diversity:
        print_diversity(diversity, "image")
    return {
        "shards": len(shards),
        "shards_generated": len(todo) + remade,
        "images": tally.images,
        "images_generated": generated,
        "regenerated": tally.regenerated,
        "below_clip_threshold": tally.below_clip_threshold,
        "dropped_unsafe": tally.dropped_unsafe,
        "images_per_second": round(generated / timer.seconds, 3) if generated else None,
        "engine": config.generating.engine,
        "workers": engine.workers if engine is not None else 0,
        "nodes": len(engine.nodes) if engine is not None else 0,
        # CLIP image embeddings per class and strategy (images made without: not counted)
        "image_diversity": diversity,
        "images_without_embedding": tally.diversity.missing,
    }


@dataclass
class _Tally:
    """What the manifest pass counts, shard by shard (no row is kept)."""

    counts: list[int] = field(default_factory=list)  # images per shard
    diversity: ImageDiversity = field(default_factory=ImageDiversity)
    foreign: list[ShardSpec] = field(default_factory=list)
    regenerated: int = 0
    below_clip_threshold: int = 0
    dropped_unsafe: int = 0

    @property
    def images(self) -> int:
        return sum(self.counts)


def _write_manifest(run: RunDir, shards: list[ShardSpec], inputs: dict[str, str]) -> _Tally:
    """manifest.parquet from the shards' row files, one shard in memory at a time; the
    shards whose stats record another digest than the plan's are left out and listed
    (stats without one come from before digests were recorded: trusted)."""
    tally = _Tally()

    def tables() -> Iterator[pa.Table]:
        for shard in shards:
            stats = read_stats(run.shards, shard.name)
            if stats.get("inputs", inputs[shard.name]) != inputs[shard.name]:
                tally.foreign.append(shard)
                continue
            rows = read_rows(run.shards, shard.name, stats)
            tally.counts.append(stats["count"])
            flags = image_flags(rows)
            tally.regenerated += flags["regenerated"]
            tally.below_clip_threshold += flags.get("below_clip_threshold", 0)
            tally.dropped_unsafe += len(stats.get("dropped_unsafe", []))
            tally.diversity.add(rows)
            yield rows

    write_manifest(run.manifest, tables())
    return tally


# Disk bytes of a shard besides its images: the tar's end, padded to a 10 KB record
# (tarfile.RECORDSIZE), the rows file's parquet schema and footer (about 3 KB) and the
# stats file. At a few images a shard it is most of the shard.
SHARD_BYTES = tarfile.RECORDSIZE + 4096 + 1024


def bytes_per_image(config: RunConfig, run: RunDir, done: list[ShardSpec]) -> tuple[float, str]:
    """Disk bytes an image takes (its JPEG, metadata, tar headers, manifest row) and how
    that was found: measured on the finished shards (with its share of their own bytes,
    SHARD_BYTES), or, before the first, estimated."""
    images = sum(s.images for s in done)
    if images:
        size = sum(path.stat().st_size for s in done
                   for path in (*shard_paths(run.shards, s.name), rows_path(run.shards, s.name))
                   if path.is_file())  # fmt: skip
        return size / images, f"measured on {len(done)} finished shard(s)"
    return estimated_bytes_per_image(config.generating), "estimated on a test image"


def estimated_bytes_per_image(cfg: GenerateConfig) -> float:
    """Disk bytes of an image before any is made: a smooth random picture at the
    configured size encoded as the stage stores images (JPEG compresses it about as well as
    a photo: 512 px at quality 90 gives 55 KB), with its tar headers and metadata."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (max(1, cfg.height // 16), max(1, cfg.width // 16), 3))
    image = Image.fromarray(small.astype(np.uint8)).resize((cfg.width, cfg.height),
                                                          Image.Resampling.BICUBIC)  # fmt: skip
    jpeg = len(encode_jpeg(image, cfg.jpeg_quality, cfg.store_size))
    # two tar headers, the JSON member and the block padding, a row in the rows file and,
    # with CLIP scores, the image's CLIP embedding there (float16; 512 numbers for ViT-B)
    return jpeg + 4 * tarfile.BLOCKSIZE + 300 + (1024 if cfg.clip_score else 0)


def estimate_generate(config: RunConfig, estimate: Estimate) -> None:
    """Shards and disk for the images the prompts will ask for."""
    gen = config.generate
    size = gen.images_per_shard if gen else 1000
    per_prompt = estimate.images_per_prompt  # empty where a budget spreads them by class
    if per_prompt:
        estimate.shards = len(plan_shards(per_prompt, size))
    else:
        estimate.shards = math.ceil(estimate.images / size)
    estimate.bytes_per_image = estimated_bytes_per_image(gen) if gen else 0.0
    estimate.disk_bytes = estimate.bytes_per_image * estimate.images
    estimate.disk_bytes += SHARD_BYTES * estimate.shards if gen else 0


def check_disk(config: RunConfig, run: RunDir, todo: list[ShardSpec],
               done: list[ShardSpec]) -> None:  # fmt: skip
    """Refuse to start shards that cannot fit the free space of the run's disk."""
    images = sum(s.images for s in todo)
    if not images:
        return
    per_image, how = bytes_per_image(config, run, done)
    # measured: each image's share of its shard's own bytes is in per_image already
    per_shard = 0 if done else SHARD_BYTES
    needed = (images * per_image + len(todo) * per_shard) * 1.05  # and the manifest
    free = shutil.disk_usage(run.root).free
    if needed > free:
        shards = f" and {_size(per_shard)} a shard" if per_shard else ""
        raise GenerateError(
            f"generate: {images:,} images to make need about {_size(needed)} "
            f"({_size(per_image)} an image{shards}, {how}); the disk of {str(run.root)!r} has "
            f"{_size(free)} free: free some space, put the run on a larger disk, or "
            "make fewer images (prompts.per_class, prompts.images_per_prompt)"
        )


def _size(count: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count:.0f} bytes"


def _remake(engine: Engine, run: RunDir, foreign: list[ShardSpec],
            prompts: list[PromptRecord], inputs: dict[str, str]) -> int:  # fmt: skip
    """Make again the shards whose stats name other inputs than the plan (a worker of an
    earlier run may have outlived it and committed one after this run discarded it); the
    images made."""
    console.print(f"  generate: {len(foreign)} shard(s) were made for other inputs (a worker "
                  "of an earlier run may have outlived it); making them again")  # fmt: skip
    for shard in foreign:
        remove_shard(run.shards, shard.name)
    return _make(engine, run, foreign, prompts, inputs)


def _make(engine: Engine | None, run: RunDir, todo: list[ShardSpec],
          prompts: list[PromptRecord], inputs: dict[str, str]) -> int:  # fmt: skip
    """Make the `todo` shards with the engine; return the images made."""
    if not todo or engine is None:
        return 0
    generated = 0
    with progress_bar() as bar:
        task = bar.add_task("generate", total=sum(s.images for s in todo), unit="images")
        made = engine.make(todo, prompts, run.shards, inputs, lambda n: bar.advance(task, n))
        for _, count in made:
            generated += count
    return generated


def _dataset_info(config: RunConfig, shards: list[ShardSpec], counts: list[int]) -> dict[str, Any]:
    """The split description timm's WebDataset reader looks for (`_info.json`), so that
    `timm.data.create_dataset("wds/NAME", root=RUN/shards, split="train",
    target_key="class_index")` reads the shards as they are."""
    return {
        "name": config.name,
        "splits": {
            "train": {
                "name": "train",
                "num_samples": sum(counts),
                "filenames": [f"{s.name}.tar" for s in shards],
                "shard_lengths": counts,
            }
        },
    }


def generate_is_complete(config: RunConfig, run: RunDir) -> bool:
    if not run.manifest.is_file() or not run.prompts.is_file():
        return False
    return all(is_done(run.shards, s.name) for s in planned_shards(config, run))


def generate_output_digest(config: RunConfig, run: RunDir) -> str:
    """Manifest bytes plus each tar's sha256 (timings in the stats files are left out)."""
    shas = [read_stats(run.shards, s.name)["sha256"] for s in planned_shards(config, run)]
    return digest_json({"manifest": sha256_file(run.manifest), "tars": shas})

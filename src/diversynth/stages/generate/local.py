"""The local engine: one process, one device, shards one after another.

While the pipeline denoises batch n+1, a background thread JPEG-encodes batch n and writes
it to the shard's tar, so the device does not wait on the encoder or the disk.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image

from diversynth.config import RunConfig
from diversynth.models.clip import ClipScorer
from diversynth.models.device import torch_threads
from diversynth.models.generator import TextToImage
from diversynth.run.artifacts.manifest import ShardRow
from diversynth.run.artifacts.records import PromptRecord
from diversynth.run.artifacts.shard_plan import ImageJob, ShardSpec, shard_jobs
from diversynth.run.artifacts.shards import ShardWriter, encode_jpeg
from diversynth.run.rundir import Timer
from diversynth.run.seeding import derive_seed
from diversynth.stages.generate.writer import BackgroundWriter


class LocalEngine:
    """Loads the models once (in this process), then makes shards one after another."""

    workers = 1

    def __init__(self, config: RunConfig, class_names: dict[int, str]) -> None:
        self.config = config
        self.class_names = class_names
        self.nodes = {socket.gethostname()}
        self.writer_tag = ""  # marks this engine's temp files (a ray worker: its node)
        self.t2i = TextToImage.load(config.generating)
        self.clip = (
            ClipScorer.load(config.clip) if config.generating.clip_score and config.clip else None
        )

    def _batches(self, jobs: list[ImageJob]) -> list[list[ImageJob]]:
        size = self.config.generating.batch_size
        return [jobs[i : i + size] for i in range(0, len(jobs), size)]

    def _scores(
        self, batch: list[ImageJob], images: list[Image.Image], unsafe: list[bool]
    ) -> tuple[list, list, list]:
        """CLIP similarity of each image to its prompt and to its class name, and its CLIP
        image embedding (float16, for the image diversity and leakage checks); None for an
        image the safety checker flagged (diffusers blacked it out: nothing to score)."""
        keep = [i for i, bad in enumerate(unsafe) if not bad]
        prompt: list[float | None] = [None] * len(batch)
        name: list[float | None] = [None] * len(batch)
        embedding: list[list[float] | None] = [None] * len(batch)
        if self.clip is None or not keep:
            return prompt, name, embedding
        kept = self.clip.encode_images([images[i] for i in keep])
        texts = [batch[i].prompt["text"] for i in keep]
        names = [self.class_names[batch[i].prompt["class_index"]] for i in keep]
        vectors = kept.cpu().numpy().astype(np.float16).tolist()
        for i, p, c, v in zip(keep, self.clip.embedded_pair_scores(kept, texts),
                              self.clip.embedded_pair_scores(kept, names), vectors,
                              strict=True):  # fmt: skip
            prompt[i], name[i], embedding[i] = p, c, v
        return prompt, name, embedding

    def _make(self, batch: list[ImageJob]) -> tuple[list[Image.Image], list[dict[str, Any]]]:
        """Images for a batch and, per image, its seed, attempt, CLIP scores and flags.

        An image the safety checker flags, or (with `clip_threshold`) one scoring below the
        threshold, is made again with the seed of the next attempt (a pure function of the
        run seed, prompt id, image index and attempt: reruns give the same images), up to
        `max_attempts` in all. The best is kept: unflagged first, then the higher score.
        An image flagged on every attempt gets the flag "unsafe" and is not written."""
        cfg = self.config.generating
        images, unsafe = self.t2i([job.prompt["text"] for job in batch],
                                  [job.seed for job in batch])  # fmt: skip
        info: list[dict[str, Any]] = [{"seed": job.seed, "attempt": 0, "unsafe": bad}
                                      for job, bad in zip(batch, unsafe, strict=True)]  # fmt: skip
        for row, p, c, e in zip(info, *self._scores(batch, images, unsafe), strict=True):
            row.update(clip_prompt=p, clip_class=c, clip_image=e)
        key = "clip_" + cfg.clip_threshold_on
        threshold = cfg.clip_threshold if self.clip is not None else None

        def low(row: dict[str, Any]) -> bool:  # an unsafe image has no score: it is dropped
            return threshold is not None and not row["unsafe"] and row[key] < threshold

        def rank(row: dict[str, Any]) -> tuple[bool, float]:
            if row["unsafe"] or threshold is None:
                return (not row["unsafe"], 0.0)
            return (True, row[key])

        def redo(row: dict[str, Any]) -> bool:
            return row["unsafe"] or low(row)

        for attempt in range(1, cfg.max_attempts):
            todo = [i for i, row in enumerate(info) if redo(row)]
            if not todo:
                break
            jobs = [batch[i] for i in todo]
            seeds = [derive_seed(self.config.seed, job.prompt["prompt_id"], job.image_index,
                                 attempt) for job in jobs]  # fmt: skip
            again, flagged = self.t2i([job.prompt["text"] for job in jobs], seeds)
            scores = self._scores(jobs, again, flagged)
            for k, i in enumerate(todo):
                row = {"seed": seeds[k], "attempt": attempt, "unsafe": flagged[k],
                       "clip_prompt": scores[0][k], "clip_class": scores[1][k],
                       "clip_image": scores[2][k]}  # fmt: skip
                if rank(row) > rank(info[i]):
                    images[i], info[i] = again[k], row
        for row in info:
            flag = "unsafe" if row["unsafe"] else "below_clip_threshold" if low(row) else None
            row["flags"] = [flag] if flag else []
            del row["unsafe"]
        return images, info

    def make(
        self,
        shards: list[ShardSpec],
        prompts: list[PromptRecord],
        folder: Path,
        inputs: dict[str, str],
        on_images: Callable[[int], None],
    ) -> Iterator[tuple[str, int]]:
        for shard in shards:
            mine = shard.take(prompts)
            stats = self.run_shard(shard, mine, folder, on_images, inputs[shard.name])
            yield shard.name, stats["count"]

    def run_shard(
        self,
        shard: ShardSpec,
        shard_prompts: Sequence[PromptRecord],
        folder: Path,
        on_images: Callable[[int], None] = lambda n: None,
        inputs: str | None = None,
    ) -> dict[str, Any]:
        """Make one whole shard from its prompts (`ShardSpec.take`) and commit it; its bytes
        depend only on the config and these prompts, not on the process that makes it.
        `inputs`, the plan's digest of those, goes into the stats file."""
        cfg = self.config.generating
        timer = Timer()
        writer = ShardWriter(folder, shard.name, self.writer_tag)
        rows: list[dict[str, Any]] = []
        dropped: list[str] = []

        def write(
            batch: list[ImageJob], images: list[Image.Image], info: list[dict[str, Any]]
        ) -> None:
            for job, image, made in zip(batch, images, info, strict=True):
                if "unsafe" in made["flags"]:
                    dropped.append(job.key)  # a blacked-out image never enters the data
                    continue
                row = {
                    "key": job.key,
                    "shard": shard.name,
                    "class_index": job.prompt["class_index"],
                    "prompt_id": job.prompt["prompt_id"],
                    "image_index": job.image_index,
                    "strategy": job.prompt["strategy"],
                    **made,
                }
                jpeg = encode_jpeg(image, cfg.jpeg_quality, cfg.store_size)
                meta = {k: v for k, v in row.items() if k != "clip_image"}  # rows file only
                writer.write(job.key, jpeg, {**meta, "prompt": job.prompt["text"]})
                rows.append(row)
            on_images(len(batch))

        with torch_threads(cfg.cpu_threads), BackgroundWriter() as background:
            try:
                for batch in self._batches(shard_jobs(shard_prompts)):
                    background.submit(write, batch, *self._make(batch))
                background.wait()
            except BaseException:
                background.close()  # no write may run after the abort below
                writer.abort()
                raise
        where = writer.close()
        for row in rows:
            row["jpg_offset"], row["jpg_size"] = where[row["key"]]
        return writer.commit(
            {
                "shard": shard.name,
                "inputs": inputs,
                "prompt_start": shard.prompt_start,
                "prompt_stop": shard.prompt_stop,
                "seconds": round(timer.seconds, 3),
                "worker": f"{socket.gethostname()}:{os.getpid()}",
                "dropped_unsafe": dropped,
            },
            cast(list[ShardRow], rows),  # the manifest's columns, made above
        )

"""The local engine: one process, one device, shards one after another.

While the pipeline denoises batch n+1, a background thread JPEG-encodes batch n and writes
it to the shard's tar, so the device does not wait on the encoder or the disk.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from diversynth.config import RunConfig
from diversynth.generate.plan import ImageJob, ShardSpec, shard_jobs
from diversynth.generate.shards import ShardWriter, encode_jpeg
from diversynth.generate.writer import BackgroundWriter
from diversynth.rundir import Timer
from diversynth.vision.clip import ClipScorer
from diversynth.vision.generator import TextToImage


class LocalEngine:
    def __init__(self, config: RunConfig, class_names: dict[int, str]):
        self.config = config
        self.class_names = class_names
        self.t2i = TextToImage.load(config.generate)
        self.clip = (
            ClipScorer.load(config.clip) if config.generate.clip_score and config.clip else None
        )

    def _batches(self, jobs: list[ImageJob]) -> list[list[ImageJob]]:
        size = self.config.generate.batch_size
        return [jobs[i : i + size] for i in range(0, len(jobs), size)]

    def _scores(self, batch: list[ImageJob], images: list[Image.Image]) -> tuple[list, list]:
        """CLIP similarity of each image to its prompt and to its class name."""
        if self.clip is None:
            return [None] * len(batch), [None] * len(batch)
        texts = [job.prompt["text"] for job in batch]
        names = [self.class_names[job.prompt["class_index"]] for job in batch]
        return self.clip.pair_scores(images, texts), self.clip.pair_scores(images, names)

    def run_shard(
        self,
        shard: ShardSpec,
        prompts: list[dict[str, Any]],
        folder: Path,
        on_images: Callable[[int], None] = lambda n: None,
    ) -> dict[str, Any]:
        cfg = self.config.generate
        timer = Timer()
        writer = ShardWriter(folder, shard.name)
        rows: list[dict[str, Any]] = []

        def write(batch: list[ImageJob], images: list[Image.Image], scores: tuple) -> None:
            for job, image, s_prompt, s_class in zip(batch, images, *scores, strict=True):
                row = {
                    "key": job.key,
                    "shard": shard.name,
                    "class_index": job.prompt["class_index"],
                    "prompt_id": job.prompt["prompt_id"],
                    "image_index": job.image_index,
                    "strategy": job.prompt["strategy"],
                    "seed": job.seed,
                    "attempt": 0,
                    "clip_prompt": s_prompt,
                    "clip_class": s_class,
                    "flags": [],
                }
                jpeg = encode_jpeg(image, cfg.jpeg_quality, cfg.store_size)
                writer.write(job.key, jpeg, {**row, "prompt": job.prompt["text"]})
                rows.append(row)
            on_images(len(batch))

        with BackgroundWriter() as background:
            try:
                for batch in self._batches(shard_jobs(shard, prompts)):
                    images = self.t2i([job.prompt["text"] for job in batch],
                                      [job.seed for job in batch])  # fmt: skip
                    background.submit(write, batch, images, self._scores(batch, images))
                background.wait()
            except BaseException:
                background.close()  # no write may run after the abort below
                writer.abort()
                raise
        return writer.commit(
            {
                "shard": shard.name,
                "prompt_start": shard.prompt_start,
                "prompt_stop": shard.prompt_stop,
                "seconds": round(timer.seconds, 3),
                "rows": rows,
            }
        )

"""The shard plan: prompt ranges per shard, fixed before any image is generated.

A shard is done or not done whatever engine ran it, so a restart redoes only the shards
whose stats file is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from diversynth.config import RunConfig
from diversynth.run.artifacts.records import PromptRecord, read_prompts
from diversynth.run.rundir import RunDir

P = TypeVar("P")  # a prompt: a PromptRecord, or the dict a worker reads back from JSON


@dataclass(frozen=True)
class ShardSpec:
    index: int
    prompt_start: int  # first prompt id (inclusive)
    prompt_stop: int  # last prompt id (exclusive)
    images: int

    @property
    def name(self) -> str:
        return f"{self.index:06d}"

    def take(self, prompts: list[P]) -> list[P]:
        """This shard's prompts out of the whole list (prompt ids are list positions)."""
        return prompts[self.prompt_start : self.prompt_stop]


def plan_shards(images_per_prompt: Sequence[int], images_per_shard: int) -> list[ShardSpec]:
    """Consecutive prompts per shard, as many as fit `images_per_shard` images (at least
    one); `images_per_prompt[i]` is prompt i's image count."""
    shards: list[ShardSpec] = []
    start = images = 0
    for prompt, count in enumerate(images_per_prompt):
        if prompt > start and images + count > images_per_shard:
            shards.append(ShardSpec(len(shards), start, prompt, images))
            start, images = prompt, 0
        images += count
    if len(images_per_prompt) > start:
        shards.append(ShardSpec(len(shards), start, len(images_per_prompt), images))
    return shards


def image_key(prompt_id: int, image_index: int) -> str:
    """Sample key in the shards and the manifest: ids only, never text (no dots: WebDataset
    splits a member name at its first dot)."""
    return f"p{prompt_id:08d}_i{image_index:03d}"


@dataclass(frozen=True)
class ImageJob:
    key: str
    prompt: Mapping[str, Any]  # a PromptRecord (or its dict, read back from JSON)
    image_index: int
    seed: int


def shard_jobs(shard_prompts: Sequence[Mapping[str, Any]]) -> list[ImageJob]:
    """Every image of a shard, given its prompts (`ShardSpec.take`), in key order."""
    jobs = []
    for prompt in shard_prompts:
        for i, seed in enumerate(prompt["image_seeds"]):
            jobs.append(ImageJob(image_key(prompt["prompt_id"], i), prompt, i, seed))
    return jobs


def planned_shards(config: RunConfig, run: RunDir,
                   prompts: list[PromptRecord] | None = None) -> list[ShardSpec]:  # fmt: skip
    """The shards of the run's prompts (`prompts`, when the caller has read them)."""
    prompts = read_prompts(run) if prompts is None else prompts
    assert config.generate is not None  # only a run that generates has shards
    return plan_shards([len(p["image_seeds"]) for p in prompts], config.generate.images_per_shard)

"""The engines that make shards, behind one interface (as img2dataset's distributors share
one signature): `generate.engine` names one, and the stage never asks which it has.

An engine is made before the shard folder is touched (the local engine loads its models,
the ray engine checks the model and its worker pool), so that a model that fails to load
costs none of the shards made with the previous settings. Each shard is made whole by one
process with the local engine's code, so every engine gives the same bytes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from diversynth.config import RunConfig
from diversynth.run.artifacts.records import PromptRecord
from diversynth.run.artifacts.shard_plan import ShardSpec

# name -> 'module:class', imported when used (torch and diffusers, or ray)
ENGINES = {
    "local": "diversynth.stages.generate.local:LocalEngine",
    "ray": "diversynth.stages.generate.ray_engine:RayEngine",
}


class Engine(Protocol):
    workers: int  # processes making shards at once
    nodes: set[str]  # the machines that made shards (filled as they are made)

    def make(
        self,
        shards: list[ShardSpec],
        prompts: list[PromptRecord],
        folder: Path,
        inputs: dict[str, str],
        on_images: Callable[[int], None],
    ) -> Iterator[tuple[str, int]]:
        """Make and commit the shards (`inputs`: the plan's digest of each, for its stats
        file); yield (shard name, images written) as each is committed, and report images
        made to `on_images` as often as the engine can."""
        ...


def open_engine(config: RunConfig, class_names: dict[int, str]) -> Engine:
    module, _, name = ENGINES[config.generating.engine].partition(":")
    return getattr(importlib.import_module(module), name)(config, class_names)

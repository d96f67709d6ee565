"""The study (--variants, --lossy, --resume-check): one process, one JSON rewritten after
each measurement, so a run stopped at a limit keeps what it measured. `Study` holds what
the parts share: the plain pipeline and its rounds, engines, timing, the time box."""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _results import machine, sync, write_result

from . import lossy, resume_check, variants
from .common import (
    CLASSES,
    PER_PROMPT,
    command,
    elapsed,
    plain_rate,
    prompt_records,
    round_up,
    run_config,
)


class Study:
    """--variants, --lossy, --resume-check in one process, one JSON."""

    def __init__(self, args: argparse.Namespace, model: Path, device: str, tmp: Path) -> None:
        self.args, self.model, self.device, self.tmp = args, model, device, tmp
        self.images = round_up(args.variant_images, args.batch)
        parts = [p for p, on in (("variants", args.variants), ("lossy", args.lossy),
                                 ("resume", args.resume_check)) if on]  # fmt: skip
        self.name = "generate_" + "_".join(parts) + ("_gpu" if device == "cuda" else "_gpu_smoke")
        self.plain: Any = None
        self.plain_rounds: dict[int, list[float]] = {}  # per batch size
        self.last_batch: list[Any] = []  # PIL images of the last plain batch
        # seconds seen (the longest engine load) and images/s (plainN: the plain pipeline's
        # first batch of size N), for the time box's estimates
        self.seen = {"load": 10.0 if device == "cuda" else 2.0}
        self.compile_seconds: float | None = None
        self.result: dict[str, Any] = {
            "machine": machine(),
            "command": command(),
            "settings": {"size": args.size, "steps": args.steps, "guidance_scale": 7.5,
                         "batch": args.batch, "scheduler": "DDIM",
                         "dtype": "float16" if device == "cuda" else "float32",
                         "rounds": args.rounds, "time_box_seconds": args.time_box},
        }  # fmt: skip

    def run(self, names: list[str]) -> None:
        """The parts asked for: the resume check, the variants `names`, the lossy rows."""
        if self.args.resume_check:
            self.result["resume_check"] = resume_check.run(self)
            self.save()
        if names:
            variants.run(self, names)
        if self.args.lossy:
            lossy.run(self)
        self.save(show=True)

    def left(self) -> float:
        """Seconds left in the time box (inf without one)."""
        return math.inf if not self.args.time_box else self.args.time_box - elapsed()

    def save(self, show: bool = False) -> None:
        """Fill in the medians and ratios measured so far and write the JSON."""
        for batch, rounds in self.plain_rounds.items():
            if rounds:
                median = round(statistics.median(rounds), 3)
                self.result.setdefault("plain_images_per_second", {})[str(batch)] = median
        for row in self.result.get("variants", []):
            if row.get("rounds"):  # measured, if only in part
                row["images_per_second"] = statistics.median(row["rounds"])
                plain = statistics.median(self.plain_rounds[row["batch"]])
                row["plain_images_per_second"] = round(plain, 3)
                row["over_plain"] = round(row["images_per_second"] / plain, 3)
        lossy_rows = self.result.get("lossy", {})
        if lossy_rows.get("reference", {}).get("rounds"):
            exact = statistics.median(lossy_rows["reference"]["rounds"])
            lossy_rows["reference"]["images_per_second"] = round(exact, 3)
            for row in lossy_rows["rows"]:
                if "images_per_second" in row:
                    row["over_default"] = round(row["images_per_second"] / exact, 3)
        write_result(self.name, self.result, show)

    def prompts(self, images: int) -> list[dict[str, Any]]:
        """Prompt records for `images` images."""
        return prompt_records(images, PER_PROMPT)

    def engine(self, row: dict[str, Any], **generate: Any) -> Any:
        """A local engine with `generate`'s settings; its load time goes to `row`."""
        from diversynth.stages.generate.local import LocalEngine

        config = run_config(self.args, self.model, self.device, **generate)
        start = time.perf_counter()
        engine = LocalEngine(config, dict(enumerate(CLASSES)))
        row["load_seconds"] = round(time.perf_counter() - start, 2)
        self.seen["load"] = max(self.seen["load"], row["load_seconds"])
        return engine

    def shard_rate(self, engine: Any, prompts: list[dict[str, Any]], out: Path) -> float:
        """Images/s of `engine.run_shard` on `prompts` as one shard."""
        from diversynth.run.artifacts.shard_plan import plan_shards

        shard = plan_shards([PER_PROMPT] * len(prompts), len(prompts) * PER_PROMPT)[0]
        sync(self.device)
        start = time.perf_counter()
        engine.run_shard(shard, prompts, out)
        sync(self.device)
        return len(prompts) * PER_PROMPT / (time.perf_counter() - start)

    def warm_up(self, engine: Any, row: dict[str, Any], batches: int, out: Path) -> None:
        """A shard of `batches` batches, outside the timing (compiling happens here)."""
        batch = engine.config.generate.batch_size
        start = time.perf_counter()
        self.shard_rate(engine, self.prompts(batches * batch), out)
        row["warmup_seconds"] = round(time.perf_counter() - start, 2)

    def free(self) -> None:
        """Let go of the last engine's memory."""
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()

    def plain_pipe(self, batch: int) -> Any:
        """The plain pipeline, loaded once and warmed up once per batch size."""
        from diffusers import StableDiffusionPipeline

        if self.plain is None:
            dtype = torch.float16 if self.device == "cuda" else torch.float32
            self.plain = StableDiffusionPipeline.from_pretrained(
                self.model, dtype=dtype, safety_checker=None, use_safetensors=True
            ).to(self.device)
            self.plain.set_progress_bar_config(disable=True)
        if batch not in self.plain_rounds:
            jobs = self.jobs(self.prompts(batch))
            self.plain_rounds[batch] = []
            self.seen[f"plain{batch}"] = plain_rate(self.plain, jobs, batch, self.args,
                                                    self.device)  # fmt: skip
        return self.plain

    @staticmethod
    def jobs(prompts: list[dict[str, Any]]) -> list[tuple[str, int]]:
        """(text, seed) of every image of `prompts`."""
        return [(p["text"], s) for p in prompts for s in p["image_seeds"]]

"""End-to-end generation speed against a bare diffusers loop, same pipeline, same batches.

diversynth's generate stage (local engine: denoising, JPEG encoding and shard writing on a
background thread, stats files, manifest.parquet) against a loop that only calls the same
loaded diffusers pipeline on the same prompt batches and seeds and keeps the PIL images.
Rounds alternate between the two; the ratio is of the median images/s. CLIP scoring is
off in both (it is extra work the bare loop would not do).

CPU, with the model kit that setup.sh builds in models/tiny:
    .venv/bin/python benchmarks/generate_speed.py [--images 192] [--steps 4] [--size 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _results import machine, write_result

from diversynth.config import load_config
from diversynth.models.generator import TextToImage
from diversynth.pipeline import run_stages
from diversynth.run.artifacts.shard_plan import planned_shards, shard_jobs
from diversynth.run.rundir import RunDir, read_jsonl

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192, help="multiple of 10 classes x 2")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default=str(ROOT / "models" / "tiny" / "stable-diffusion"))
    args = parser.parse_args()
    per_class = max(1, args.images // 20)
    overrides = [
        f"generate.model={args.model}", f"generate.steps={args.steps}",
        f"generate.height={args.size}", f"generate.width={args.size}",
        f"generate.batch_size={args.batch}", "generate.images_per_shard=32",
        "generate.clip_score=false", "prompts.shares={naive: 1}",
        f"prompts.per_class={per_class}", "prompts.images_per_prompt=2",
        "prompts.templates=clip-imagenet",
    ]  # fmt: skip
    config = load_config(ROOT / "configs" / "offline.yaml", overrides)
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(Path(tmp) / "run")
        run_stages(config, run, ["classes", "prompts"])
        prompts = read_jsonl(run.prompts)
        shards = planned_shards(config, run)
        jobs = [job for shard in shards for job in shard_jobs(shard.take(prompts))]
        images = len(jobs)
        t2i = TextToImage.load(config.generate)
        batches = [jobs[i : i + args.batch] for i in range(0, images, args.batch)]

        def bare() -> float:
            start = time.perf_counter()
            for batch in batches:
                t2i([job.prompt["text"] for job in batch], [job.seed for job in batch])
            return images / (time.perf_counter() - start)

        def diversynth() -> float:
            start = time.perf_counter()
            run_stages(config, run, ["generate"], force=["generate"])
            return images / (time.perf_counter() - start)

        bare()  # warm-up
        rates: dict[str, list[float]] = {"bare_loop": [], "diversynth": []}
        for _ in range(args.rounds):
            rates["bare_loop"].append(bare())
            rates["diversynth"].append(diversynth())
    medians = {name: statistics.median(values) for name, values in rates.items()}
    write_result("generate_speed_cpu", {
        "machine": machine(),
        "command": "python benchmarks/generate_speed.py " + " ".join(sys.argv[1:]),
        "images_per_round": images,
        "images_per_second": {k: round(v, 2) for k, v in medians.items()},
        "diversynth_over_bare": round(medians["diversynth"] / medians["bare_loop"], 3),
        "note": "diversynth's time includes loading the pipeline each round (the stage loads "
                "it); the bare loop's pipeline stays loaded",
    })  # fmt: skip


if __name__ == "__main__":
    main()

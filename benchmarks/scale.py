"""Every stage but the diffusion model at ImageNet size: 1000 classes at 1x and 6x.

1x is 1000 classes x 16 prompts x 80 images = 1.28M images (ImageNet-1k's training set
is 1,281,167); 6x is 96 prompts a class, 7.68M images. The real code runs throughout:
the classes stage (imagenet1k catalog, text mode), the prompts stage (templates, and
contexts and styles from an OpenAI-compatible server on loopback that answers at once, so
the LLM's own speed is not what is timed), the generate stage with the local engine
writing real shards, stats files and the manifest, `generate --status`, the train stage
(the synthetic index over every image, then a few hundred steps of a small CNN on real
and synthetic images), the report stage, and a rerun of the whole pipeline with every
stage up to date. The one stand-in is the text-to-image pipeline: it returns a 16 px image
of one colour per seed, so that what is timed is everything around the GPU.

Each stage runs in a process of its own, which reports its wall time and peak RSS.

    .venv/bin/python benchmarks/scale.py [--scales 1 6] [--work /tmp/diversynth-scale]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

from _results import machine, write_result
from PIL import Image
from prompts_scale import InstantAnswers

ROOT = Path(__file__).resolve().parents[1]

CLASSES = 1000
PROMPTS_AT_1X = 16  # per class
IMAGES_PER_PROMPT = 80
# tiny real images, so that the train stage has a real part: 8000 of them at 32 real and
# 32 synthetic images a step make one epoch of 250 steps
REAL_PER_CLASS = 8
STAGES = ["classes", "prompts", "generate", "status", "train", "report", "rerun"]


class StandInImages:
    """In place of the diffusion pipeline: a 16 px image of one colour per seed."""

    @classmethod
    def load(cls, config: object) -> StandInImages:
        return cls()

    def __call__(self, prompts: list[str], seeds: list[int]) -> tuple[list, list[bool]]:
        images = [Image.new("RGB", (16, 16), (s & 255, (s >> 8) & 255, (s >> 16) & 255))
                  for s in seeds]  # fmt: skip
        return images, [False] * len(seeds)


def settings(scale: int, url: str, real: Path, per_prompt: int) -> list[str]:
    per_class = PROMPTS_AT_1X * scale
    return [
        f"llm={{backend: openai, model: instant, base_url: {url}, max_in_flight: 16}}",
        f"prompts.per_class={per_class}",
        f"prompts.images_per_prompt={per_prompt}",
        "prompts.shares={naive: 0.2, cd: 0.5, sd: 0.3}",
        f"generate={{model: {ROOT / 'models/tiny/stable-diffusion'}, clip_score: false, "
        "batch_size: 80, images_per_shard: 4000, height: 16, width: 16}",
        f"data={{format: imagefolder, root: {real}}}",
        "train={model: resnet10t, image_size: 32, batch_size: 64, synthetic_fraction: 0.5, "
        "epochs: 1, workers: 2, checkpoint_every: 100000, tensorboard: false, "
        "channels_last: false}",
        "report={images_per_class: 24}",
    ]


def make_real(folder: Path) -> None:
    """An ImageFolder with REAL_PER_CLASS images per class (train) and one (val)."""
    if (folder / "done").is_file():
        return
    for split, count in (("train", REAL_PER_CLASS), ("val", 1)):
        for c in range(CLASSES):
            target = folder / split / str(c)
            target.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("RGB", (32, 32), (c % 256, (c * 7 + i) % 256, i * 40)).save(
                    target / f"{i}.png"
                )
    (folder / "done").touch()


def child(stage: str, run: Path, overrides: list[str]) -> None:
    """Run one stage in this process and print its wall time and peak RSS as JSON."""
    from diversynth.config import load_config
    from diversynth.pipeline import STAGE_NAMES, run_stages
    from diversynth.run.rundir import RunDir
    from diversynth.stages.generate import local

    local.TextToImage = StandInImages  # the one stand-in
    config = load_config(ROOT / "configs" / "imagenet1k.yaml", overrides)
    start = time.perf_counter()
    if stage == "status":
        from diversynth.stages.generate.status import format_status, generation_status

        print(format_status(generation_status(RunDir(run))), file=sys.stderr)
    else:
        stages = STAGE_NAMES if stage == "rerun" else [stage]
        outcome = run_stages(config, RunDir(run), stages=[s for s in stages if s != "evaluate"])
        if stage == "rerun":
            assert set(outcome.values()) == {"skipped"}, outcome
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": round(seconds, 1), "peak_rss_mb": round(peak)}))


def run_scale(scale: int, work: Path, url: str, per_prompt: int) -> dict[str, dict[str, float]]:
    real = work / "real"
    make_real(real)
    run = work / f"run-{scale}x"
    shutil.rmtree(run, ignore_errors=True)
    overrides = settings(scale, url, real, per_prompt)
    results = {}
    for stage in STAGES:
        command = [sys.executable, __file__, "--child", stage, "--run", str(run), "--", *overrides]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
        results[stage] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{scale}x {stage}: {results[stage]}", flush=True)
    manifest = run / "manifest.parquet"
    shards = sum(p.stat().st_size for p in (run / "shards").glob("*.tar"))
    results["data"] = {"images": _rows(manifest), "shard_gb": round(shards / 1e9, 2),
                       "manifest_mb": round(manifest.stat().st_size / 1e6, 1)}  # fmt: skip
    return results


def _rows(manifest: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(manifest).num_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 6])
    parser.add_argument("--work", type=Path, default=Path("/tmp/diversynth-scale"))
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    parser.add_argument("--images-per-prompt", type=int, default=IMAGES_PER_PROMPT,
                        help="fewer for a quick look (80: ImageNet size)")  # fmt: skip
    parser.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.run, args.overrides)
        return

    server = ThreadingHTTPServer(("127.0.0.1", 0), InstantAnswers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    args.work.mkdir(parents=True, exist_ok=True)
    by_scale = {}
    for scale in args.scales:
        by_scale[f"{scale}x"] = run_scale(scale, args.work, url, args.images_per_prompt)
        if not args.keep:
            shutil.rmtree(args.work / f"run-{scale}x")
    result = {
        "benchmark": "scale",
        "machine": machine(),
        "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:]),
        "classes": CLASSES,
        "prompts_per_class_at_1x": PROMPTS_AT_1X,
        "images_per_prompt": args.images_per_prompt,
        "train_steps": CLASSES * REAL_PER_CLASS // 32,
        "stand_in": "the text-to-image pipeline (16 px one-colour images); all else real",
        "by_scale": by_scale,
    }
    low, high = f"{min(args.scales)}x", f"{max(args.scales)}x"
    if low != high:
        result["growth"] = {
            stage: round(
                by_scale[high][stage]["seconds"] / max(by_scale[low][stage]["seconds"], 0.1), 2
            )  # fmt: skip
            for stage in STAGES
        }
    write_result("scale", result)


if __name__ == "__main__":
    main()

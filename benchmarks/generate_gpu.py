"""GPU generation speed: diversynth's local engine end to end against plain diffusers.

The SD 1.5 architecture with random weights (the released model's arithmetic, built from
its configs and saved with save_pretrained, so both sides load it through from_pretrained),
512 px, 50 DDIM steps, CFG 7.5, fp16, 16 images a batch, on one GPU:

- baseline: `StableDiffusionPipeline.__call__` on the batches, PIL images out, nothing else;
- diversynth: `LocalEngine.run_shard` on the same prompts and seeds in shards of 48 images:
  denoising, JPEG encoding and tar writes (on the writer thread), stats files; CLIP scoring
  off (the baseline does none). Loading and the warm-up shard (torch.compile's compilation
  with --compile) are left out of the timed part on both sides.

Rounds alternate; the ratio is of the median images/s. The tokenizer is the model kit's
real CLIP tokenizer (models/tiny/stable-diffusion/tokenizer). Last, a probe times one eager
UNet step and one VAE decode with contiguous and with channels_last weights (the default
of `generate.channels_last` rests on it).

    python benchmarks/generate_gpu.py [--compile] [--fuse-qkv] [--channels-last]
                                      [--images 96] [--rounds 2]
    python benchmarks/generate_gpu.py --tiny      # CPU smoke test on the kit's tiny pipeline

The study of the speed settings, one JSON (generate_variants_gpu.json, or named after
the parts run) rewritten after each measurement, so a run stopped at a limit keeps them:

- `--variants [LIST]`: named engine settings, `+`-joined tokens (eager; compile: compile
  true + fused QKV; a torch.compile mode name such as reduce-overhead, CUDA graphs, also
  with fused QKV; vae: compile_vae; flash, cudnn, efficient, math: sdpa_kernel;
  channels-last; batchN), each measured alone in rounds of --variant-images images (48)
  alternating with the plain pipeline at the same batch size; its ratio is to the median
  of every plain round at that batch size. Loading and the warm-up shard (one batch, two
  with CUDA graphs; compiling happens there) are timed apart. Variants run in one process:
  one whose denoiser settings an earlier one shares reuses its compiled graphs (dynamo's
  cache), so only the first compile of each is a fresh process's. Before them a probe
  times the UNet's largest attention with each kernel and names torch's own pick; after
  them, one times a batch's eager parts (text encoding, UNet step, VAE decode, JPEGs).
- `--lossy`: settings that change pixels, against the default mode (the engine with the
  generate defaults, eager): DPM-Solver++ at 20 and 25 steps (of 50: scaled to --steps),
  diffusers' pyramid attention broadcast (the one cache hook of diffusers 0.42.1 that finds
  layers in a UNet: first-block, Mag and Sea caches want top-level transformer blocks,
  FasterCache and TaylorSeer names a UNet lacks, the text K/V cache NucleusMoE blocks),
  fp8 weights and activations through torchao (eager); each with its images/s, ratio,
  and PSNR against the default mode's images of the same seeds (mean and lowest).
- `--resume-check`: the generate stage (generate.stage.run_generate, default mode) on 2
  shards, uninterrupted in this process, and in a child's fork killed with SIGKILL in the
  middle of its second shard (the hook of diversynth.testing.kill_driver), then resumed
  by the child: the shards' tar and rows files and the manifest must be the same bytes.

`--time-box` (360 s on a GPU, from the start) begins a variant or a lossy row only when
its estimated time fits (compiling: as long as the longest compile so far, 90 s before the
first): the default list ends within about 7 minutes on an H100, the rows left out marked.

    python benchmarks/generate_gpu.py --variants          # compile,compile+vae,...
    python benchmarks/generate_gpu.py --lossy --resume-check
    python benchmarks/generate_gpu.py --tiny --variants eager,batch16 --lossy \\
        --resume-check          # CPU smoke test, under a minute (DIVERSYNTH_BENCHMARK_RESULTS=DIR
                                # writes its JSON there)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _results import START, log, machine, median_seconds, sync, write_result

ROOT = Path(__file__).resolve().parents[1]

TINY = ROOT / "models" / "tiny" / "stable-diffusion"
CLASSES = ["tench", "goldfinch", "tree frog", "golden retriever", "tabby cat",
           "school bus", "espresso", "volcano", "daisy", "acoustic guitar"]  # fmt: skip


def build_sd15(folder: Path) -> Path:
    """SD 1.5's components from their configs, random weights, saved as a hub model is."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
    ))  # fmt: skip
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=CLIPTokenizer.from_pretrained(TINY / "tokenizer"),
        unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    return folder


def prompt_records(images: int, per_prompt: int) -> list[dict[str, Any]]:
    """Prompt records as the prompts stage writes them (naive, 10 classes)."""
    from diversynth.run.seeding import derive_seed

    return [
        {
            "prompt_id": i,
            "class_index": i % len(CLASSES),
            "strategy": "naive",
            "text": f"a photo of a {CLASSES[i % len(CLASSES)]}.",
            "image_seeds": [derive_seed(0, i, k) for k in range(per_prompt)],
        }
        for i in range(images // per_prompt)
    ]


# most telling first: the time box drops the last ones
DEFAULT_VARIANTS = ("compile,compile+vae,compile+vae+cudnn,reduce-overhead,"
                    "compile+vae+cudnn+batch32,eager")  # fmt: skip
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SPEED_SETTINGS = ("compile", "fuse_qkv", "compile_vae", "sdpa_kernel", "channels_last")
PER_PROMPT = 2  # images per prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the kit's tiny pipeline, on CPU")
    parser.add_argument("--images", type=int, default=96, help="per round, a multiple of 48")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, help="per setting (2; with the study flags 1)")
    parser.add_argument("--compile", action="store_true", help="generate.compile: true")
    parser.add_argument("--fuse-qkv", action="store_true", help="generate.fuse_qkv: true")
    parser.add_argument("--channels-last", action="store_true", help="generate.channels_last: true")
    parser.add_argument(
        "--variants",
        nargs="?",
        const=DEFAULT_VARIANTS,
        help=f"comma list of engine settings (default: {DEFAULT_VARIANTS})",
    )
    parser.add_argument(
        "--variant-images",
        type=int,
        default=48,
        help="per round of a variant or lossy row (a multiple of its batch)",
    )
    parser.add_argument("--lossy", action="store_true", help="the pixel-changing settings")
    parser.add_argument("--resume-check", action="store_true",
                        help="killed mid-shard and resumed: the same bytes")  # fmt: skip
    parser.add_argument(
        "--time-box", type=float, help="seconds for the whole call (360 on a GPU; none on the CPU)"
    )
    parser.add_argument("--resume-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.resume_child:
        resume_child(args.resume_child)
        return
    if args.tiny:
        args.size, args.steps, args.images, args.batch = 32, 2, 96, 8
        args.variant_images = min(args.variant_images, 16)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    study = bool(args.variants or args.lossy or args.resume_check)
    if args.rounds is None:
        args.rounds = 1 if study else 2
    if args.time_box is None and device == "cuda":
        args.time_box = 360.0
    variants = [v.strip() for v in args.variants.split(",")] if args.variants else []
    for name in variants:  # a misspelt variant fails before minutes of model building
        variant_settings(name, args.batch)

    with tempfile.TemporaryDirectory() as tmp:
        model = TINY if args.tiny else build_sd15(Path(tmp) / "sd15")
        log(f"model ready: {model.name}")
        if study:
            Study(args, model, device, Path(tmp)).run(variants)
        else:
            legacy(args, model, device, Path(tmp))


def run_config(args: argparse.Namespace, model: Path, device: str, **generate: Any) -> Any:
    """The run's config: the benchmark's generate settings, then `generate`'s."""
    from diversynth.config import RunConfig

    return RunConfig.model_validate({
        "classes": {"names": CLASSES},
        # a hub id, checked by form only: no bundled asset needed on a bare GPU machine
        "prompts": {"images_per_prompt": PER_PROMPT,
                    "embedder": "sentence-transformers/all-MiniLM-L6-v2"},
        "generate": {
            "model": str(model), "dtype": "float16", "device": device, "steps": args.steps,
            "guidance_scale": 7.5, "height": args.size, "width": args.size,
            "batch_size": args.batch, "images_per_shard": 48, "clip_score": False,
            **generate,
        },
    })  # fmt: skip


def legacy(args: argparse.Namespace, model: Path, device: str, tmp: Path) -> None:
    """One engine setting against plain diffusers (the flags --compile, --fuse-qkv,
    --channels-last), then the layout probe."""
    from diffusers import StableDiffusionPipeline

    from diversynth.run.artifacts.shard_plan import plan_shards
    from diversynth.stages.generate.local import LocalEngine

    per_shard = 48
    prompts = prompt_records(args.images, PER_PROMPT)
    config = run_config(args, model, device, images_per_shard=per_shard, compile=args.compile,
                        fuse_qkv=args.fuse_qkv, channels_last=args.channels_last)  # fmt: skip
    shards = plan_shards([PER_PROMPT] * len(prompts), per_shard)
    out = tmp / "shards"
    out.mkdir()
    engine = LocalEngine(config, dict(enumerate(CLASSES)))
    notes: dict[str, Any] = {}
    try:
        engine.run_shard(shards[0], shards[0].take(prompts), out)  # warm-up (and compile)
    except Exception as exc:  # noqa: BLE001 - inductor options this torch may not know
        if not args.compile:
            raise
        notes["compile_fallback"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        log(f"compile: true failed ({notes['compile_fallback']}); trying mode 'default'")
        config.generate.compile = "default"
        del engine
        engine = LocalEngine(config, dict(enumerate(CLASSES)))
        engine.run_shard(shards[0], shards[0].take(prompts), out)
    log("diversynth warm-up shard done" + (" (compiled)" if args.compile else ""))

    dtype = torch.float16 if device == "cuda" else torch.float32
    plain = StableDiffusionPipeline.from_pretrained(
        model, dtype=dtype, safety_checker=None, use_safetensors=True
    ).to(device)
    plain.set_progress_bar_config(disable=True)
    jobs = [(p["text"], s) for p in prompts for s in p["image_seeds"]]

    def diversynth() -> float:
        sync(device)
        start = time.perf_counter()
        for shard in shards:
            engine.run_shard(shard, shard.take(prompts), out)
        sync(device)
        return len(jobs) / (time.perf_counter() - start)

    plain_rate(plain, jobs[: args.batch], args.batch, args, device)  # warm-up
    log("warm-ups done")
    rates: dict[str, list[float]] = {"plain_diffusers": [], "diversynth": []}
    for _ in range(args.rounds):  # the result is rewritten after every round: a run
        rates["plain_diffusers"].append(plain_rate(plain, jobs, args.batch, args, device))
        rates["diversynth"].append(diversynth())  # stopped at a limit keeps it
        log(f"round {len(rates['diversynth'])}")
        write_speed(rates, args, device, len(jobs), notes)
    # which memory layout the eager parts want: cheap, so done last
    notes["eager_layout_seconds"] = layout_probe(plain, args.batch, args.size)
    log(f"layout probe: {notes['eager_layout_seconds']}")
    write_speed(rates, args, device, len(jobs), notes)


def plain_rate(plain: Any, jobs: list[tuple[str, int]], batch: int, args: argparse.Namespace,
               device: str, keep: list[Any] | None = None) -> float:  # fmt: skip
    """Images/s of plain `StableDiffusionPipeline.__call__` on `jobs` in batches; the last
    batch's PIL images go to `keep`."""
    sync(device)
    start = time.perf_counter()
    for i in range(0, len(jobs), batch):
        part = jobs[i : i + batch]
        generators = [torch.Generator("cpu").manual_seed(s) for _, s in part]
        out = plain(prompt=[t for t, _ in part], num_inference_steps=args.steps,
                    guidance_scale=7.5, height=args.size, width=args.size, output_type="pil",
                    generator=generators)  # fmt: skip
    sync(device)
    rate = len(jobs) / (time.perf_counter() - start)
    if keep is not None:
        keep[:] = out.images
    return rate


def variant_settings(name: str, batch: int) -> dict[str, Any]:
    """The generate settings of a variant's `+`-joined tokens, validated."""
    from pydantic import ValidationError

    from diversynth.config import GenerateConfig
    from diversynth.models.generator import SDPA_KERNELS

    settings: dict[str, Any] = {"batch_size": batch}
    for token in name.split("+"):
        if token == "eager":
            continue
        if token == "compile":
            settings |= {"compile": True, "fuse_qkv": True}
        elif token in MODES:
            settings |= {"compile": token, "fuse_qkv": True}
        elif token == "vae":
            settings["compile_vae"] = True
        elif token in SDPA_KERNELS:
            settings["sdpa_kernel"] = token
        elif token == "channels-last":
            settings["channels_last"] = True
        elif token.startswith("batch") and token[5:].isdigit():
            settings["batch_size"] = int(token[5:])
        else:
            raise SystemExit(f"--variants: {token!r} in {name!r} is none of eager, compile, "
                             f"{', '.join(MODES)}, vae, {', '.join(SDPA_KERNELS)}, channels-last, "
                             "batchN")  # fmt: skip
    try:
        GenerateConfig(model=str(TINY), **settings)
    except ValidationError as exc:
        raise SystemExit(f"--variants {name}: {exc.errors()[0]['msg']}") from exc
    return settings


def round_up(images: int, batch: int) -> int:
    """At least `images`, whole batches of whole prompts."""
    step = math.lcm(batch, PER_PROMPT)
    return max(step, -(-images // step) * step)


def psnr(a: Any, b: Any) -> float:
    """Peak signal-to-noise ratio of two 8-bit images in dB; inf when identical."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


class Capture:
    """An engine's text-to-image call that keeps the images it makes (for PSNR) and
    first runs `before` (a reset of stateful hooks: each batch starts afresh)."""

    def __init__(self, t2i: Any, before: Any = None):
        self.t2i, self.before, self.images = t2i, before, []

    def __call__(self, prompts: list[str], seeds: list[int]) -> Any:
        if self.before is not None:
            self.before()
        images, flagged = self.t2i(prompts, seeds)
        self.images.extend(images)
        return images, flagged


class Study:
    """--variants, --lossy, --resume-check in one process, one JSON."""

    def __init__(self, args: argparse.Namespace, model: Path, device: str, tmp: Path):
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
            "command": "python benchmarks/generate_gpu.py " + " ".join(sys.argv[1:]),
            "settings": {"size": args.size, "steps": args.steps, "guidance_scale": 7.5,
                         "batch": args.batch, "scheduler": "DDIM",
                         "dtype": "float16" if device == "cuda" else "float32",
                         "rounds": args.rounds, "time_box_seconds": args.time_box},
        }  # fmt: skip

    # ------------------------------------------------------------------ plumbing
    def left(self) -> float:
        return math.inf if not self.args.time_box else self.args.time_box - elapsed()

    def save(self, show: bool = False) -> None:
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
        lossy = self.result.get("lossy", {})
        if lossy.get("reference", {}).get("rounds"):
            exact = statistics.median(lossy["reference"]["rounds"])
            lossy["reference"]["images_per_second"] = round(exact, 3)
            for row in lossy["rows"]:
                if "images_per_second" in row:
                    row["over_default"] = round(row["images_per_second"] / exact, 3)
        write_result(self.name, self.result, show)

    def prompts(self, images: int) -> list[dict[str, Any]]:
        return prompt_records(images, PER_PROMPT)

    def engine(self, row: dict[str, Any], **generate: Any) -> Any:
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
        return [(p["text"], s) for p in prompts for s in p["image_seeds"]]

    # ------------------------------------------------------------------ the parts
    def run(self, variants: list[str]) -> None:
        if self.args.resume_check:
            self.result["resume_check"] = self.resume_check()
            self.save()
        if variants:
            self.variants(variants)
        if self.args.lossy:
            self.lossy()
        self.save(show=True)

    def variants(self, names: list[str]) -> None:
        import torch._dynamo

        # each batch size compiled for its shape, as in a process of its own (not as a
        # dynamic-shape graph after the first), and every variant's graphs kept
        torch._dynamo.config.automatic_dynamic_shapes = False
        for limit in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, limit):
                setattr(torch._dynamo.config, limit, 64)
        rows: list[dict[str, Any]] = []
        self.result["variants"] = rows
        out = self.tmp / "variants"
        out.mkdir()
        self.result["attention_seconds"] = attention_probe(self.args, self.device)
        log(f"attention probe: {self.result['attention_seconds']}")
        self.plain_pipe(self.args.batch)
        for name in names:
            settings = variant_settings(name, self.args.batch)
            batch = settings["batch_size"]
            images = round_up(self.args.variant_images, batch)
            row: dict[str, Any] = {"variant": name, "settings": settings, "batch": batch,
                                   "images_per_round": images}  # fmt: skip
            rows.append(row)
            speed = sorted(set(settings) & set(SPEED_SETTINGS))
            if self.device != "cuda" and speed:
                row["skipped"] = (f"{', '.join(speed)}: GPU settings, which TextToImage.load "
                                  "leaves off on the CPU")  # fmt: skip
                log(f"variant {name}: skipped ({row['skipped']})")
                self.save()
                continue
            rate = self.seen[f"plain{self.args.batch}"]  # eager images/s, one batch's
            warm = (self.compile_seconds or 90.0) if "compile" in settings else batch / rate
            if batch not in self.plain_rounds:
                warm += batch / rate  # the plain pipeline's first batch of that size
            estimate = self.seen["load"] + warm + self.args.rounds * 2 * images / rate
            if estimate > self.left():
                row["skipped"] = (f"time box: about {estimate:.0f} s needed, "
                                  f"{self.left():.0f} s left")  # fmt: skip
                log(f"variant {name}: skipped ({row['skipped']})")
                self.save()
                continue
            try:
                self.plain_pipe(batch)
                self.measure_variant(row, settings, images, out)
            except Exception as exc:  # noqa: BLE001 - recorded: the other variants go on
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                log(f"variant {name}: {row['error']}")
            self.free()
            self.save()
        if self.left() > 30:  # where a batch's time goes: cheap, so done last
            self.result["eager_parts_seconds"] = parts_probe(
                self.plain, self.args, self.device, self.last_batch
            )
            log(f"parts probe: {self.result['eager_parts_seconds']}")

    def measure_variant(self, row: dict[str, Any], settings: dict[str, Any], images: int,
                        out: Path) -> None:  # fmt: skip
        batch = settings["batch_size"]
        engine = self.engine(row, images_per_shard=images, **settings)
        graphs = settings.get("compile") in ("reduce-overhead", "max-autotune")
        self.warm_up(engine, row, 2 if graphs else 1, out)  # CUDA graphs record on call 2
        if "compile" in settings:  # the longest compile so far estimates the next
            self.compile_seconds = max(self.compile_seconds or 0.0, row["warmup_seconds"])
        prompts = self.prompts(images)
        jobs = self.jobs(prompts)
        row["rounds"], row["plain_rounds"] = [], []
        for _ in range(self.args.rounds):
            keep = self.last_batch if batch == self.args.batch else None  # for the probe
            plain = plain_rate(self.plain_pipe(batch), jobs, batch, self.args, self.device, keep)
            self.plain_rounds[batch].append(plain)
            row["plain_rounds"].append(round(plain, 3))
            row["rounds"].append(round(self.shard_rate(engine, prompts, out), 3))
        log(f"variant {row['variant']}: {statistics.median(row['rounds']):.3f} images/s, plain "
            f"{statistics.median(self.plain_rounds[batch]):.3f} (warm-up "
            f"{row['warmup_seconds']} s)")  # fmt: skip

    def lossy(self) -> None:
        rate = self.seen.get(f"plain{self.args.batch}")  # eager, when the variants ran
        if rate and self.seen["load"] + 4 * self.images / rate > self.left():
            self.result["lossy"] = {"skipped": f"time box: {self.left():.0f} s left"}
            log(f"lossy: skipped ({self.result['lossy']['skipped']})")
            return
        prompts = self.prompts(self.images)
        out = self.tmp / "lossy"
        out.mkdir()
        reference: dict[str, Any] = {"setting": "the generate defaults (eager, DDIM)",
                                     "steps": self.args.steps, "rounds": []}  # fmt: skip
        rows: list[dict[str, Any]] = []
        self.result["lossy"] = {"reference": reference, "rows": rows}
        engine = self.engine(reference, images_per_shard=self.images)
        engine.t2i = exact = Capture(engine.t2i)
        self.warm_up(engine, reference, 1, out)
        exact.images = []
        reference["rounds"].append(round(self.shard_rate(engine, prompts, out), 3))
        rate = reference["rounds"][0]
        log(f"lossy: default mode {rate:.3f} images/s")
        self.save()
        for name, settings in LOSSY.items():
            if "steps" in settings:
                settings = {
                    **settings,
                    "steps": max(1, round(settings["steps"] * self.args.steps / 50)),
                }
            row: dict[str, Any] = {"setting": name, **settings}
            rows.append(row)
            reason = fp8_unavailable(self.device) if name == "fp8" else None
            steps = settings.get("steps", self.args.steps)
            estimate = self.seen["load"] + 2 * self.images / rate * steps / self.args.steps
            if reason is None and estimate > self.left():
                reason = f"time box: about {estimate:.0f} s needed, {self.left():.0f} s left"
            if reason is not None:
                row["skipped"] = reason
                log(f"lossy {name}: skipped ({reason})")
                self.save()
                continue
            try:
                self.measure_lossy(row, name, settings, prompts, exact.images, out)
            except Exception as exc:  # noqa: BLE001 - recorded: the other rows go on
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                log(f"lossy {name}: {row['error']}")
            self.free()
            self.save()
        # the default mode again: its rate is the median of a round before and one after
        reference["rounds"].append(round(self.shard_rate(engine, prompts, out), 3))

    def measure_lossy(
        self,
        row: dict[str, Any],
        name: str,
        settings: dict[str, Any],
        prompts: list[dict[str, Any]],
        exact: list[Any],
        out: Path,
    ) -> None:
        engine = self.engine(row, images_per_shard=self.images, **settings)
        before = None
        if name == "pab":
            before = pyramid_attention_broadcast(engine.t2i.pipe)
        elif name == "fp8":
            from torchao.quantization import (
                Float8DynamicActivationFloat8WeightConfig,
                PerRow,
                quantize_,
            )

            config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
            quantize_(engine.t2i.pipe.unet, config)  # the linear layers; eager
        engine.t2i = made = Capture(engine.t2i, before)
        self.warm_up(engine, row, 1, out)
        made.images = []
        row["images_per_second"] = round(self.shard_rate(engine, prompts, out), 3)
        values = [psnr(a, b) for a, b in zip(exact, made.images, strict=True)]
        row["psnr_db_mean"] = round(statistics.mean(values), 2)
        row["psnr_db_min"] = round(min(values), 2)
        log(f"lossy {name}: {row['images_per_second']:.3f} images/s, PSNR "
            f"{row['psnr_db_mean']} dB (min {row['psnr_db_min']})")  # fmt: skip

    def resume_check(self) -> dict[str, Any]:
        """Two runs of the generate stage in the default mode: one uninterrupted (here), one
        killed mid-shard and resumed (in a child): the same shard and manifest bytes."""
        from diversynth.run.rundir import RunDir, write_jsonl
        from diversynth.stages.generate.stage import run_generate

        per_shard = round_up(2 * self.args.batch, self.args.batch)  # two batches a shard
        prompts = self.prompts(2 * per_shard)
        # on the CPU the sums depend on the thread count: the same in every process
        threads = torch.get_num_threads() if self.device == "cpu" else None
        config = run_config(self.args, self.model, self.device, images_per_shard=per_shard,
                            cpu_threads=threads)  # fmt: skip
        folder = self.tmp / "resume"
        runs = {name: RunDir(folder / name) for name in ("whole", "killed")}
        for run in runs.values():
            run.root.mkdir(parents=True)
            write_jsonl(run.classes, [{"index": i, "name": n} for i, n in enumerate(CLASSES)])
            write_jsonl(run.prompts, [{**p, "seed": p["image_seeds"][0]} for p in prompts])
        start = time.perf_counter()
        run_generate(config, runs["whole"], "resume-check")
        seconds = {"whole": round(time.perf_counter() - start, 2)}
        job, report = folder / "job.json", folder / "child.json"
        spec = {"config": config.model_dump(mode="json"), "run": str(runs["killed"].root),
                "report": str(report)}  # fmt: skip
        job.write_text(json.dumps(spec))
        start = time.perf_counter()
        # NVML answers "is CUDA there?" before the fork: no CUDA driver in use when forking
        env = {**os.environ, "PYTORCH_NVML_BASED_CUDA_CHECK": "1"}
        child = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--resume-child",
                                str(job)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, cwd=ROOT, env=env)  # fmt: skip
        seconds["killed_and_resumed"] = round(time.perf_counter() - start, 2)
        files = [f"shards/{s:06d}.{e}" for s in (0, 1) for e in ("tar", "rows.parquet")]
        files.append("manifest.parquet")
        different = [f for f in files if not (runs["killed"].root / f).is_file()
                     or (runs["killed"].root / f).read_bytes()
                     != (runs["whole"].root / f).read_bytes()]  # fmt: skip
        result: dict[str, Any] = {
            "identical": child.returncode == 0 and not different,
            "killed_mid_shard": False,
            "compared": files,
            "different": different,
            "shards": 2,
            "images_per_shard": per_shard,
            "settings": "the generate defaults: no compile, fused QKV, channels_last or "
                        "compiled VAE; sdpa_kernel auto",
            "seconds": seconds,
        }  # fmt: skip
        if child.returncode == 0:
            result |= json.loads(report.read_text())
        if not (result["identical"] and result["killed_mid_shard"]):
            result["child_output"] = child.stdout[-3000:]
        log(f"resume check: identical {result['identical']}, killed mid-shard "
            f"{result['killed_mid_shard']}, {different or 'no'} files differ")  # fmt: skip
        return result


# pixel-changing settings: generate keys, steps as of 50 (scaled to --steps); pab and fp8
# are set on the loaded pipeline
LOSSY: dict[str, dict[str, Any]] = {
    "dpm++20": {"scheduler": "DPMSolverMultistepScheduler", "steps": 20},
    "dpm++25": {"scheduler": "DPMSolverMultistepScheduler", "steps": 25},
    "pab": {},
    "fp8": {},
}


def fp8_unavailable(device: str) -> str | None:
    """Why fp8 through torchao cannot run here (None: it can)."""
    try:
        import torchao  # noqa: F401
    except ImportError:
        return "torchao not installed"
    except Exception as exc:  # noqa: BLE001 - a torchao built for another torch
        return f"torchao does not import: {type(exc).__name__}: {exc}"
    if device != "cuda" or torch.cuda.get_device_capability() < (8, 9):
        return "fp8 matrix products need an NVIDIA GPU of compute capability 8.9 or later"
    return None


def pyramid_attention_broadcast(pipe: Any) -> Any:
    """diffusers' pyramid attention broadcast on the UNet's self-attention layers: between
    timesteps 100 and 800 every other step reuses the layer's last output. The timestep is
    read by a pre-hook on the UNet (an SD pipeline keeps none); returns the reset of the
    hooks' state, due before each batch."""
    from diffusers import PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast
    from diffusers.hooks import HookRegistry

    now = {"t": 1000}

    def note(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        now["t"] = int(args[1] if len(args) > 1 else kwargs["timestep"])

    pipe.unet.register_forward_pre_hook(note, with_kwargs=True)
    apply_pyramid_attention_broadcast(pipe.unet, PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(100, 800),
        current_timestep_callback=lambda: now["t"],
    ))  # fmt: skip
    return HookRegistry.check_if_exists_or_initialize(pipe.unet).reset_stateful_hooks


def resume_child(job: Path) -> None:
    """--resume-check's child: the generate stage on a run in a fork killed with SIGKILL
    once the first image of its second shard is written (the hook of
    diversynth.testing.kill_driver), then resumed here. As kill_driver does, it forks
    before any torch operation (after one import of what both need), which is safe; the
    report goes to the job's file."""
    from diversynth.config import RunConfig
    from diversynth.models.pipeline_traits import text_to_image_classes
    from diversynth.run.artifacts.shards import is_done
    from diversynth.run.rundir import RunDir
    from diversynth.stages.generate.stage import run_generate
    from diversynth.testing.kill_driver import die_in_second_shard

    spec = json.loads(job.read_text())
    config, run = RunConfig.model_validate(spec["config"]), RunDir(spec["run"])
    text_to_image_classes()  # every pipeline module, imported once for both processes
    # a CUDA context made before the fork (an import that asks the device's capability, say)
    # cannot be used in the child: say so rather than leave the child's failure silent
    cuda_before_fork = torch.cuda.is_initialized()
    pid = os.fork()
    if pid == 0:  # killed by its own hand, or exits 3 with its traceback printed
        try:
            die_in_second_shard()
            run_generate(config, run, "resume-check")
        except BaseException:  # noqa: BLE001 - the child's only way to tell why it was not killed
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    shards = run.shards
    mid = (is_done(shards, "000000") and not is_done(shards, "000001")
           and any(shards.glob("000001.tar.*.tmp")))  # fmt: skip
    summary = run_generate(config, run, "resume-check")
    Path(spec["report"]).write_text(json.dumps({
        "killed_mid_shard": killed and mid, "shards_remade_on_resume": summary["shards_generated"],
        "cuda_initialised_before_fork": cuda_before_fork,
    }))  # fmt: skip


def attention_probe(args: argparse.Namespace, device: str, repeats: int = 10) -> dict[str, Any]:
    """Median seconds of the UNet's largest attention (SD 1.5's 8 heads of 40 over every
    latent pixel, the batch doubled by guidance) with each kernel alone, and the kernel
    torch picks itself: what `generate.sdpa_kernel: auto` runs on this card."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention

    from diversynth.models.generator import SDPA_KERNELS

    dtype = torch.float16 if device == "cuda" else torch.float32
    q = torch.randn(2 * args.batch, 8, (args.size // 8) ** 2, 40, device=device, dtype=dtype)
    result: dict[str, Any] = {"shape": list(q.shape)}
    result["auto_picks"] = SDPBackend(torch._fused_sdp_choice(q, q, q)).name
    for name, kernel in SDPA_KERNELS.items():
        try:
            with sdpa_kernel(getattr(SDPBackend, kernel)):
                seconds = median_seconds(lambda: scaled_dot_product_attention(q, q, q), device,
                                         repeats)  # fmt: skip
            result[name] = round(seconds, 6)
        except RuntimeError as exc:  # not on this device, dtype or shape
            result[name] = f"unavailable: {str(exc).splitlines()[0][:120]}"
    return result


def parts_probe(pipe: Any, args: argparse.Namespace, device: str, images: list[Any],
                repeats: int = 5) -> dict[str, Any]:  # fmt: skip
    """Median eager seconds of a batch's parts on the plain pipeline: text encoding (the
    prompts and the empty prompt), one UNet step with guidance, the VAE decode, and the JPEG
    encoding of a batch (CPU work the engine's writer thread overlaps with the next batch),
    with their shares of a batch: what overlapping text encoding with denoising could save."""
    from diversynth.run.artifacts.shards import encode_jpeg

    unet, vae, batch = pipe.unet, pipe.vae, args.batch
    like = {"device": unet.device, "dtype": unet.dtype}
    size = args.size // 8
    latents = torch.randn(2 * batch, unet.config.in_channels, size, size, **like)
    text = torch.randn(2 * batch, 77, unet.config.cross_attention_dim, **like)
    step = torch.tensor(500, device=unet.device)
    prompts = [f"a photo of a {CLASSES[i % len(CLASSES)]}." for i in range(batch)]

    def seconds(fn: Any, where: Any = unet.device) -> float:
        return median_seconds(fn, where, repeats)

    with torch.inference_mode():
        parts = {
            "text_encode": seconds(lambda: pipe.encode_prompt(prompts, unet.device, 1, True)),
            "unet_cfg_step": seconds(lambda: unet(latents, step, encoder_hidden_states=text)),
            "vae_decode": seconds(lambda: vae.decode(latents[:batch] / vae.config.scaling_factor)),
        }  # fmt: skip
    if images:
        parts["jpeg_encode"] = seconds(lambda: [encode_jpeg(i, 90, None) for i in images], "cpu")
    total = parts["text_encode"] + args.steps * parts["unet_cfg_step"] + parts["vae_decode"]
    shares = {f"{k}_share": round(v / total, 4) for k, v in parts.items() if k != "unet_cfg_step"}
    return {"batch": batch, **{k: round(v, 4) for k, v in parts.items()}, **shares}


def elapsed() -> float:
    return time.perf_counter() - START


def layout_probe(pipe: Any, batch: int, size: int, repeats: int = 5) -> dict[str, Any]:
    """Median seconds of one eager UNet step with classifier-free guidance (2 x batch
    latents) and of one VAE decode of a batch, with the weights contiguous and then in
    channels_last: whether `generate.channels_last` should default to on."""
    unet, vae = pipe.unet, pipe.vae
    like = {"device": unet.device, "dtype": unet.dtype}
    latents = torch.randn(2 * batch, unet.config.in_channels, size // 8, size // 8, **like)
    text = torch.randn(2 * batch, 77, unet.config.cross_attention_dim, **like)
    step = torch.tensor(500, device=unet.device)

    def seconds(fn: Any) -> float:  # two untimed warm-ups, then the median
        return round(median_seconds(fn, unet.device, repeats), 4)

    result = {}
    with torch.inference_mode():
        for name, layout in (("contiguous", torch.contiguous_format),
                             ("channels_last", torch.channels_last)):  # fmt: skip
            unet.to(memory_format=layout)
            vae.to(memory_format=layout)
            result[name] = {
                "unet_cfg_step": seconds(lambda: unet(latents, step, encoder_hidden_states=text)),
                "vae_decode": seconds(
                    lambda: vae.decode(latents[:batch] / vae.config.scaling_factor)
                ),
            }
    return result


def write_speed(rates: dict[str, list[float]], args: argparse.Namespace, device: str,
                images: int, notes: dict[str, Any]) -> None:  # fmt: skip
    medians = {name: statistics.median(values) for name, values in rates.items()}
    name = "generate_speed_gpu" if device == "cuda" else "generate_speed_gpu_smoke"
    write_result(name, {
        "machine": machine(),
        "command": "python benchmarks/generate_gpu.py " + " ".join(sys.argv[1:]),
        "settings": {"size": args.size, "steps": args.steps, "guidance_scale": 7.5,
                     "batch": args.batch, "dtype": "float16" if device == "cuda" else "float32",
                     "scheduler": "DDIM", "compile": args.compile,
                     "fuse_qkv": args.fuse_qkv, "channels_last": args.channels_last,
                     "images_per_round": images},
        "images_per_second": {k: round(v, 3) for k, v in medians.items()},
        "all_rounds": {k: [round(x, 3) for x in v] for k, v in rates.items()},
        "diversynth_over_plain": round(medians["diversynth"] / medians["plain_diffusers"], 3),
        **notes,
    })  # fmt: skip


if __name__ == "__main__":
    main()

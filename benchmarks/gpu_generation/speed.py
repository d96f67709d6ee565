"""One engine setting (the flags --compile, --fuse-qkv, --channels-last) against plain
diffusers, rounds alternating, then the layout probe; generate_speed_gpu.json."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from _results import log, machine, sync, write_result

from .common import CLASSES, PER_PROMPT, command, plain_rate, prompt_records, run_config
from .probes import layout_probe


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


def write_speed(rates: dict[str, list[float]], args: argparse.Namespace, device: str,
                images: int, notes: dict[str, Any]) -> None:  # fmt: skip
    """Write generate_speed_gpu.json (generate_speed_gpu_smoke.json off the GPU)."""
    medians = {name: statistics.median(values) for name, values in rates.items()}
    name = "generate_speed_gpu" if device == "cuda" else "generate_speed_gpu_smoke"
    write_result(name, {
        "machine": machine(),
        "command": command(),
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

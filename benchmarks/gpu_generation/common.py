"""What every part of the GPU generation benchmark shares: SD 1.5 built from its configs,
prompt records, the run config, the plain pipeline's images/s, the command line."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _results import START, sync

ROOT = Path(__file__).resolve().parents[2]

TINY = ROOT / "models" / "tiny" / "stable-diffusion"
CLASSES = ["tench", "goldfinch", "tree frog", "golden retriever", "tabby cat",
           "school bus", "espresso", "volcano", "daisy", "acoustic guitar"]  # fmt: skip
PER_PROMPT = 2  # images per prompt


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


def round_up(images: int, batch: int) -> int:
    """At least `images`, whole batches of whole prompts."""
    step = math.lcm(batch, PER_PROMPT)
    return max(step, -(-images // step) * step)


def elapsed() -> float:
    """Seconds since the benchmark started."""
    return time.perf_counter() - START


def command() -> str:
    """The command line as the result JSON records it."""
    return "python benchmarks/generate_gpu.py " + " ".join(sys.argv[1:])

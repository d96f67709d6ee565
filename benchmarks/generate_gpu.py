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
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))
from _results import log, machine, median_seconds, sync, write_result  # noqa: E402

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
    from diversynth.seeding import derive_seed

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the kit's tiny pipeline, on CPU")
    parser.add_argument("--images", type=int, default=96, help="per round, a multiple of 48")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="generate.compile: true")
    parser.add_argument("--fuse-qkv", action="store_true", help="generate.fuse_qkv: true")
    parser.add_argument("--channels-last", action="store_true", help="generate.channels_last: true")
    args = parser.parse_args()
    if args.tiny:
        args.size, args.steps, args.images, args.batch = 32, 2, 96, 8

    from diffusers import StableDiffusionPipeline

    from diversynth.config import RunConfig
    from diversynth.generate.local import LocalEngine
    from diversynth.generate.plan import plan_shards

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    per_shard, per_prompt = 48, 2
    with tempfile.TemporaryDirectory() as tmp:
        model = TINY if args.tiny else build_sd15(Path(tmp) / "sd15")
        log(f"model ready: {model.name}")
        prompts = prompt_records(args.images, per_prompt)
        config = RunConfig.model_validate({
            "classes": {"names": CLASSES},
            # a hub id, checked by form only: no bundled asset needed on a bare GPU machine
            "prompts": {"images_per_prompt": per_prompt,
                        "embedder": "sentence-transformers/all-MiniLM-L6-v2"},
            "generate": {
                "model": str(model), "dtype": "float16", "device": device, "steps": args.steps,
                "guidance_scale": 7.5, "height": args.size, "width": args.size,
                "batch_size": args.batch, "images_per_shard": per_shard, "clip_score": False,
                "compile": args.compile, "fuse_qkv": args.fuse_qkv,
                "channels_last": args.channels_last,
            },
        })  # fmt: skip
        shards = plan_shards([per_prompt] * len(prompts), per_shard)
        out = Path(tmp) / "shards"
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
        batches = [jobs[i : i + args.batch] for i in range(0, len(jobs), args.batch)]

        def baseline(batches: list[list[tuple[str, int]]] = batches) -> float:
            sync(device)
            start = time.perf_counter()
            for batch in batches:
                generators = [torch.Generator("cpu").manual_seed(s) for _, s in batch]
                plain(prompt=[t for t, _ in batch], num_inference_steps=args.steps,
                      guidance_scale=7.5, height=args.size, width=args.size, output_type="pil",
                      generator=generators)  # fmt: skip
            sync(device)
            return sum(map(len, batches)) / (time.perf_counter() - start)

        def diversynth() -> float:
            sync(device)
            start = time.perf_counter()
            for shard in shards:
                engine.run_shard(shard, shard.take(prompts), out)
            sync(device)
            return len(jobs) / (time.perf_counter() - start)

        baseline(batches[:1])  # warm-up
        log("warm-ups done")
        rates: dict[str, list[float]] = {"plain_diffusers": [], "diversynth": []}
        for _ in range(args.rounds):  # the result is rewritten after every round: a run
            rates["plain_diffusers"].append(baseline())  # stopped at a limit keeps it
            rates["diversynth"].append(diversynth())
            log(f"round {len(rates['diversynth'])}")
            write_speed(rates, args, device, len(jobs), notes)
        # which memory layout the eager parts want: cheap, so done last
        notes["eager_layout_seconds"] = layout_probe(plain, args.batch, args.size)
        log(f"layout probe: {notes['eager_layout_seconds']}")
        write_speed(rates, args, device, len(jobs), notes)


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
    write_result("generate_speed_gpu" if device == "cuda" else "generate_speed_gpu_smoke", {
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

"""GPU generation speed: diversynth's local engine end to end against plain diffusers.

The SD 1.5 architecture with random weights (built from its configs and saved with
save_pretrained, so both sides load it through from_pretrained; the tokenizer is the model
kit's, models/tiny/stable-diffusion/tokenizer), 512 px, 50 DDIM steps, CFG 7.5, fp16, 16
images a batch, on one GPU:

- baseline: `StableDiffusionPipeline.__call__` on the batches, PIL images out, nothing else;
- diversynth: `LocalEngine.run_shard` on the same prompts and seeds in shards of 48 images:
  denoising, JPEG encoding and tar writes (on the writer thread), stats files; CLIP scoring
  off (the baseline does none). Loading and the warm-up shard (torch.compile's compilation
  with --compile) are left out of the timed part on both sides.

Rounds alternate; the ratio is of the median images/s. Last, a probe times one eager UNet
step and one VAE decode with contiguous and with channels_last weights
(gpu_generation/speed.py, probes.py).

    python benchmarks/generate_gpu.py [--compile] [--fuse-qkv] [--channels-last]
                                      [--images 96] [--rounds 2]
    python benchmarks/generate_gpu.py --tiny      # CPU smoke test on the kit's tiny pipeline

The study of the speed settings, one JSON (generate_variants_gpu.json, or named after the
parts run) rewritten after each measurement, within --time-box (360 s on a GPU):

- `--variants [LIST]`: named engine settings, `+`-joined tokens (eager; compile: compile
  true + fused QKV; a torch.compile mode name such as reduce-overhead, CUDA graphs, also
  with fused QKV; vae: compile_vae; flash, cudnn, efficient, math: sdpa_kernel;
  channels-last; batchN), each alone in rounds of --variant-images images (48) against
  the plain pipeline at the same batch size; an attention kernel probe before them, an
  eager parts probe after (gpu_generation/variants.py, probes.py);
- `--lossy`: pixel-changing settings (DPM-Solver++ at 20 and 25 of 50 steps, pyramid
  attention broadcast, fp8 through torchao) against the default mode: images/s, ratio and
  PSNR (gpu_generation/lossy.py);
- `--resume-check`: the generate stage on 2 shards, uninterrupted, and killed mid-shard
  then resumed: the same bytes (gpu_generation/resume_check.py).

    python benchmarks/generate_gpu.py --variants          # compile,compile+vae,...
    python benchmarks/generate_gpu.py --lossy --resume-check
    python benchmarks/generate_gpu.py --tiny --variants eager,batch16 --lossy \\
        --resume-check          # CPU smoke test, under a minute (DIVERSYNTH_BENCHMARK_RESULTS=DIR
                                # writes its JSON there)

Findings, and why the defaults are what they are: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _results import log
from gpu_generation.common import TINY, build_sd15
from gpu_generation.resume_check import resume_child
from gpu_generation.speed import legacy
from gpu_generation.study import Study
from gpu_generation.variants import DEFAULT_VARIANTS, variant_settings


def main() -> None:
    """Parse the options and run the one-setting comparison or the study."""
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


if __name__ == "__main__":
    main()

"""--lossy: settings that change pixels, against the default mode (the engine with the
generate defaults, eager): DPM-Solver++ at 20 and 25 steps (of 50: scaled to --steps),
diffusers' pyramid attention broadcast, fp8 weights and activations through torchao
(eager); each with its images/s, ratio, and PSNR against the default mode's images of the
same seeds (mean and lowest). A row begins only when its estimated time fits the time box."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from _results import log

if TYPE_CHECKING:
    from .study import Study

# pixel-changing settings: generate keys, steps as of 50 (scaled to --steps); pab and fp8
# are set on the loaded pipeline
LOSSY: dict[str, dict[str, Any]] = {
    "dpm++20": {"scheduler": "DPMSolverMultistepScheduler", "steps": 20},
    "dpm++25": {"scheduler": "DPMSolverMultistepScheduler", "steps": 25},
    "pab": {},
    "fp8": {},
}


def psnr(a: Any, b: Any) -> float:
    """Peak signal-to-noise ratio of two 8-bit images in dB; inf when identical."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


class Capture:
    """An engine's text-to-image call that keeps the images it makes (for PSNR) and
    first runs `before` (a reset of stateful hooks: each batch starts afresh)."""

    def __init__(self, t2i: Any, before: Any = None) -> None:
        self.t2i, self.before, self.images = t2i, before, []

    def __call__(self, prompts: list[str], seeds: list[int]) -> Any:
        if self.before is not None:
            self.before()
        images, flagged = self.t2i(prompts, seeds)
        self.images.extend(images)
        return images, flagged


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


def run(study: Study) -> None:
    """The default mode's round, each lossy row, then the default mode's second round."""
    args = study.args
    rate = study.seen.get(f"plain{args.batch}")  # eager, when the variants ran
    if rate and study.seen["load"] + 4 * study.images / rate > study.left():
        study.result["lossy"] = {"skipped": f"time box: {study.left():.0f} s left"}
        log(f"lossy: skipped ({study.result['lossy']['skipped']})")
        return
    prompts = study.prompts(study.images)
    out = study.tmp / "lossy"
    out.mkdir()
    reference: dict[str, Any] = {"setting": "the generate defaults (eager, DDIM)",
                                 "steps": args.steps, "rounds": []}  # fmt: skip
    rows: list[dict[str, Any]] = []
    study.result["lossy"] = {"reference": reference, "rows": rows}
    engine = study.engine(reference, images_per_shard=study.images)
    engine.t2i = exact = Capture(engine.t2i)
    study.warm_up(engine, reference, 1, out)
    exact.images = []
    reference["rounds"].append(round(study.shard_rate(engine, prompts, out), 3))
    rate = reference["rounds"][0]
    log(f"lossy: default mode {rate:.3f} images/s")
    study.save()
    for name, settings in LOSSY.items():
        if "steps" in settings:
            settings = {
                **settings,
                "steps": max(1, round(settings["steps"] * args.steps / 50)),
            }
        row: dict[str, Any] = {"setting": name, **settings}
        rows.append(row)
        reason = fp8_unavailable(study.device) if name == "fp8" else None
        steps = settings.get("steps", args.steps)
        estimate = study.seen["load"] + 2 * study.images / rate * steps / args.steps
        if reason is None and estimate > study.left():
            reason = f"time box: about {estimate:.0f} s needed, {study.left():.0f} s left"
        if reason is not None:
            row["skipped"] = reason
            log(f"lossy {name}: skipped ({reason})")
            study.save()
            continue
        try:
            measure(study, row, name, settings, prompts, exact.images, out)
        except Exception as exc:  # noqa: BLE001 - recorded: the other rows go on
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            log(f"lossy {name}: {row['error']}")
        study.free()
        study.save()
    # the default mode again: its rate is the median of a round before and one after
    reference["rounds"].append(round(study.shard_rate(engine, prompts, out), 3))


def measure(
    study: Study,
    row: dict[str, Any],
    name: str,
    settings: dict[str, Any],
    prompts: list[dict[str, Any]],
    exact: list[Any],
    out: Path,
) -> None:
    """One lossy row: its engine, warm-up, a timed shard and the PSNR against `exact`."""
    engine = study.engine(row, images_per_shard=study.images, **settings)
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
    study.warm_up(engine, row, 1, out)
    made.images = []
    row["images_per_second"] = round(study.shard_rate(engine, prompts, out), 3)
    values = [psnr(a, b) for a, b in zip(exact, made.images, strict=True)]
    row["psnr_db_mean"] = round(statistics.mean(values), 2)
    row["psnr_db_min"] = round(min(values), 2)
    log(f"lossy {name}: {row['images_per_second']:.3f} images/s, PSNR "
        f"{row['psnr_db_mean']} dB (min {row['psnr_db_min']})")  # fmt: skip

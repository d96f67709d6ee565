"""--variants: named engine settings, each measured alone against the plain pipeline at the
same batch size, with the attention probe before them and the eager parts probe after.

A variant is `+`-joined tokens (`variant_settings`). Each runs in rounds of
--variant-images images alternating with the plain pipeline; its ratio is to the median of
every plain round at that batch size. Loading and the warm-up shard (one batch, two with
CUDA graphs; compiling happens there) are timed apart. All variants run in one process, so
one whose denoiser settings an earlier one shares reuses its compiled graphs (dynamo's
cache). A variant begins only when its estimated time fits the time box (compiling: as long
as the longest compile so far, 90 s before the first); the rows left out are marked."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _results import log

from .common import TINY, plain_rate, round_up
from .probes import attention_probe, parts_probe

if TYPE_CHECKING:
    from .study import Study

# most telling first: the time box drops the last ones
DEFAULT_VARIANTS = ("compile,compile+vae,compile+vae+cudnn,reduce-overhead,"
                    "compile+vae+cudnn+batch32,eager")  # fmt: skip
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SPEED_SETTINGS = ("compile", "fuse_qkv", "compile_vae", "sdpa_kernel", "channels_last")


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


def run(study: Study, names: list[str]) -> None:
    """The attention probe, each variant of `names` in turn, then the eager parts probe."""
    import torch._dynamo

    # each batch size compiled for its shape, as in a process of its own (not as a
    # dynamic-shape graph after the first), and every variant's graphs kept
    torch._dynamo.config.automatic_dynamic_shapes = False
    for limit in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, 64)
    args = study.args
    rows: list[dict[str, Any]] = []
    study.result["variants"] = rows
    out = study.tmp / "variants"
    out.mkdir()
    study.result["attention_seconds"] = attention_probe(args, study.device)
    log(f"attention probe: {study.result['attention_seconds']}")
    study.plain_pipe(args.batch)
    for name in names:
        settings = variant_settings(name, args.batch)
        batch = settings["batch_size"]
        images = round_up(args.variant_images, batch)
        row: dict[str, Any] = {"variant": name, "settings": settings, "batch": batch,
                               "images_per_round": images}  # fmt: skip
        rows.append(row)
        speed = sorted(set(settings) & set(SPEED_SETTINGS))
        if study.device != "cuda" and speed:
            row["skipped"] = (f"{', '.join(speed)}: GPU settings, which TextToImage.load "
                              "leaves off on the CPU")  # fmt: skip
            log(f"variant {name}: skipped ({row['skipped']})")
            study.save()
            continue
        rate = study.seen[f"plain{args.batch}"]  # eager images/s, one batch's
        warm = (study.compile_seconds or 90.0) if "compile" in settings else batch / rate
        if batch not in study.plain_rounds:
            warm += batch / rate  # the plain pipeline's first batch of that size
        estimate = study.seen["load"] + warm + args.rounds * 2 * images / rate
        if estimate > study.left():
            row["skipped"] = (f"time box: about {estimate:.0f} s needed, "
                              f"{study.left():.0f} s left")  # fmt: skip
            log(f"variant {name}: skipped ({row['skipped']})")
            study.save()
            continue
        try:
            study.plain_pipe(batch)
            measure(study, row, settings, images, out)
        except Exception as exc:  # noqa: BLE001 - recorded: the other variants go on
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            log(f"variant {name}: {row['error']}")
        study.free()
        study.save()
    if study.left() > 30:  # where a batch's time goes: cheap, so done last
        study.result["eager_parts_seconds"] = parts_probe(
            study.plain, args, study.device, study.last_batch
        )
        log(f"parts probe: {study.result['eager_parts_seconds']}")


def measure(study: Study, row: dict[str, Any], settings: dict[str, Any], images: int,
            out: Path) -> None:  # fmt: skip
    """One variant's warm-up, then its rounds alternating with the plain pipeline's."""
    args = study.args
    batch = settings["batch_size"]
    engine = study.engine(row, images_per_shard=images, **settings)
    graphs = settings.get("compile") in ("reduce-overhead", "max-autotune")
    study.warm_up(engine, row, 2 if graphs else 1, out)  # CUDA graphs record on call 2
    if "compile" in settings:  # the longest compile so far estimates the next
        study.compile_seconds = max(study.compile_seconds or 0.0, row["warmup_seconds"])
    prompts = study.prompts(images)
    jobs = study.jobs(prompts)
    row["rounds"], row["plain_rounds"] = [], []
    for _ in range(args.rounds):
        keep = study.last_batch if batch == args.batch else None  # for the probe
        plain = plain_rate(study.plain_pipe(batch), jobs, batch, args, study.device, keep)
        study.plain_rounds[batch].append(plain)
        row["plain_rounds"].append(round(plain, 3))
        row["rounds"].append(round(study.shard_rate(engine, prompts, out), 3))
    log(f"variant {row['variant']}: {statistics.median(row['rounds']):.3f} images/s, plain "
        f"{statistics.median(study.plain_rounds[batch]):.3f} (warm-up "
        f"{row['warmup_seconds']} s)")  # fmt: skip

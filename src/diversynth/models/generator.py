"""Text-to-image generation with any diffusers pipeline, one torch.Generator per image."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from diversynth.config import GenerateConfig
from diversynth.errors import DiversynthError
from diversynth.models.safe_weights import loading
from diversynth.models.device import pick_device, pick_dtype
from diversynth.models.pipeline_traits import (
    PipelineTraits,
    PipelineTraitsError,
    call_options,
    load_overrides,
    read_traits,
    setting_problems,
)


class GeneratorLoadError(DiversynthError):
    pass


def _scheduler_class(name: str) -> Any:
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise GeneratorLoadError(f"generate.scheduler: no diffusers scheduler named {name!r}")
    return cls


def check_model(config: GenerateConfig) -> PipelineTraits:
    """What the pipeline takes, read from its configs without loading weights, checked
    against the settings, and the scheduler name: a wrong reference or a setting the
    pipeline would ignore fails here, in a second, rather than in every worker."""
    if config.scheduler:
        _scheduler_class(config.scheduler)
    try:
        traits = read_traits(config.model)
    except PipelineTraitsError as exc:
        raise GeneratorLoadError(str(exc)) from exc
    problems = setting_problems(traits, config)
    if problems:
        raise GeneratorLoadError("\n".join(problems))
    return traits


# generate.sdpa_kernel's names for torch's attention kernels (torch.nn.attention.SDPBackend)
SDPA_KERNELS = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}  # fmt: skip


def _sdpa_backends(name: str) -> list[Any]:
    """`generate.sdpa_kernel` as a priority list for torch.nn.attention.sdpa_kernel: the
    chosen kernel, then torch's own order for the calls it cannot run."""
    from torch.nn.attention import SDPBackend

    order = (SDPA_KERNELS[name], "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")
    return [getattr(SDPBackend, kernel) for kernel in dict.fromkeys(order)]


def _under_sdpa(fn: Callable[..., Any], backends: list[Any]) -> Callable[..., Any]:
    """`fn` run under the attention kernels `backends`. Wrapped before torch.compile, the
    choice is traced into the compiled code; set around a compiled call, it would not be
    seen: dynamo does not guard on it, and reuses a graph that another instance traced
    under other kernels."""
    from torch.nn.attention import sdpa_kernel

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with sdpa_kernel(backends, set_priority=True):
            return fn(*args, **kwargs)

    return run


def _speed_up(pipe: Any, config: GenerateConfig) -> None:
    """The GPU settings of diffusers' own speed-up guide, each one optional. cudnn.benchmark
    stays off: its timed algorithm picks can differ from one process to the next, and with
    them the pixels of a shard remade after a resume."""
    name = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
    denoiser = getattr(pipe, name, None)
    vae = getattr(pipe, "vae", None)
    if config.channels_last:
        for module in (denoiser, vae):
            if module is not None:
                module.to(memory_format=torch.channels_last)
    if config.fuse_qkv:
        if not hasattr(pipe, "fuse_qkv_projections"):
            raise GeneratorLoadError(
                f"generate.fuse_qkv: {type(pipe).__name__} cannot fuse its projections"
            )
        pipe.fuse_qkv_projections()
    if config.sdpa_kernel != "auto":
        backends = _sdpa_backends(config.sdpa_kernel)
        if denoiser is not None:
            denoiser.forward = _under_sdpa(denoiser.forward, backends)
        if vae is not None:
            vae.decode = _under_sdpa(vae.decode, backends)
    if config.compile:
        if config.compile is True:
            settings: dict[str, Any] = {"options": {
                # the inductor settings of diffusers' speed-up guide
                "conv_1x1_as_mm": True,
                "epilogue_fusion": False,
                # no kernel picked by timing where the pick changes the sums: a shard
                # remade in another process must get the same pixels
                "deterministic": True,
            }}  # fmt: skip
        else:  # torch.compile takes a mode or options, not both; timed picks allowed
            settings = {"mode": config.compile}
        if denoiser is not None:
            setattr(pipe, name, torch.compile(denoiser, **settings))
        if config.compile_vae and vae is not None:
            # the method pipelines call, as diffusers' guide compiles it
            vae.decode = torch.compile(vae.decode, **settings)


@dataclass
class TextToImage:
    """A loaded pipeline and the settings it runs with."""

    pipe: Any
    config: GenerateConfig
    device: torch.device
    traits: PipelineTraits

    @classmethod
    def load(cls, config: GenerateConfig) -> TextToImage:
        import diffusers
        import transformers
        from diffusers import AutoPipelineForText2Image

        # Our own progress bars report the work; the libraries' loading bars are noise.
        diffusers.utils.logging.disable_progress_bar()
        diffusers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()

        device = pick_device(config.device, "generate.device")
        dtype = pick_dtype(config.dtype, device)
        traits = check_model(config)
        extra: dict[str, Any] = load_overrides(traits, config)
        if "safety_checker" in traits.components and not config.safety_checker:
            extra["safety_checker"] = None  # not even loaded
        with loading("generate.model", config.model, GeneratorLoadError):
            pipe = AutoPipelineForText2Image.from_pretrained(
                config.model,
                dtype=dtype,
                use_safetensors=True,  # never unpickle weights
                trust_remote_code=config.trust_remote_code,
                **extra,
            )
        if config.safety_checker and getattr(pipe, "safety_checker", None) is None:
            raise GeneratorLoadError(
                f"generate.safety_checker: true, but {config.model!r} has no safety checker"
            )
        if config.scheduler:
            pipe.scheduler = _scheduler_class(config.scheduler).from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        pipe = pipe.to(device)
        if device.type == "cuda":
            _speed_up(pipe, config)
        return cls(pipe=pipe, config=config, device=device, traits=traits)

    def __call__(
        self, prompts: list[str], seeds: list[int]
    ) -> tuple[list[Image.Image], list[bool]]:
        """One image per (prompt, seed), each depending only on its own seed, and whether
        the safety checker (when kept) flagged it."""
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        options = call_options(self.traits, self.config)
        if self.config.negative_prompt:  # checked: the pipeline takes it and guides with it
            options["negative_prompt"] = [self.config.negative_prompt] * len(prompts)
        with torch.inference_mode():
            out = self.pipe(
                prompt=prompts,
                height=self.config.height,
                width=self.config.width,
                generator=generators,
                output_type="pil",
                **options,
            )
        flagged = getattr(out, "nsfw_content_detected", None) or [False] * len(prompts)
        return list(out.images), [bool(f) for f in flagged]

"""Probes of where a batch's time goes, on the plain pipeline's parts: the attention kernels
(before the variants), the eager parts of a batch (after them) and the memory layout (after
the one-setting comparison)."""

from __future__ import annotations

import argparse
from typing import Any

import torch
from _results import median_seconds

from .common import CLASSES


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

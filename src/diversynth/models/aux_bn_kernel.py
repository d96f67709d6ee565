"""Auxiliary BN's input gradient for both halves of a batch in one pass (a Triton kernel).

Why a kernel of our own: aten's batch-norm backward has no `out=` form, so each half's
input gradient came back as a new tensor and was copied into the full gradient. On an
H100 (ResNet-50, bf16, batch 256) those copies were 3.5 ms of the 6.7 ms auxiliary BN added
to a 64.5 ms step (benchmarks/results/aux_bn_kernels_gpu.json). Here aten still computes
each half's reductions with its own kernels (`native_batch_norm_backward` asked for the
weight and bias gradients only), and one kernel writes the input gradient of both halves
from them: the reads and writes of plain BN's own elementwise backward, nothing more.

The formula is aten's: grad_x = (dy - mean(dy) - (x - mean) * proj) * invstd * weight, with
proj = mean(dy * (x - mean)) * invstd^2, each term per half and channel, in float32 (float64
for float64 inputs), as aten computes it.

On a machine without a GPU the kernel runs only under Triton's interpreter
(TRITON_INTERPRET=1), which is how the tests check it; training on the CPU keeps aten's path.
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # a torch build without Triton: auxiliary BN keeps aten's path
    triton = None

BLOCK = 1024


def _input_grad_body(  # a Triton kernel once triton.jit wraps it (see _kernel)
    # in the kernel every argument is a tl.tensor (a pointer, or a scalar); Triton compiles
    # and specializes them as if unannotated (it reads dtype names and `constexpr` only)
    grad_ptr: tl.tensor, x_ptr: tl.tensor, out_ptr: tl.tensor,
    # the real half, per channel
    weight0: tl.tensor, mean0: tl.tensor, invstd0: tl.tensor,
    grad_weight0: tl.tensor, grad_bias0: tl.tensor,
    # the synthetic half
    weight1: tl.tensor, mean1: tl.tensor, invstd1: tl.tensor,
    grad_weight1: tl.tensor, grad_bias1: tl.tensor,
    numel: tl.tensor, split_at: tl.tensor, inner: tl.tensor,
    channels: tl.tensor, count0: tl.tensor, count1: tl.tensor,
    BLOCK: tl.constexpr,
) -> None:  # fmt: skip
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < numel
    channel = (offs // inner) % channels
    # samples are outermost in both layouts: the synthetic half starts at a flat offset
    aux = offs >= split_at
    real, synthetic = inside & (offs < split_at), inside & aux
    # per-channel values of each element's half (a few hundred bytes: they stay in cache);
    # read here rather than gathered into a table first, which would cost launches
    mean = tl.where(
        aux,
        tl.load(mean1 + channel, mask=synthetic, other=0.0),
        tl.load(mean0 + channel, mask=real, other=0.0),
    )
    invstd = tl.where(
        aux,
        tl.load(invstd1 + channel, mask=synthetic, other=0.0),
        tl.load(invstd0 + channel, mask=real, other=0.0),
    )
    exact = mean.dtype  # float32, or float64 for float64 inputs, as aten computes
    weight = tl.where(
        aux,
        tl.load(weight1 + channel, mask=synthetic, other=0.0),
        tl.load(weight0 + channel, mask=real, other=0.0),
    ).to(exact)
    sum_dy_xhat = tl.where(
        aux,
        tl.load(grad_weight1 + channel, mask=synthetic, other=0.0),
        tl.load(grad_weight0 + channel, mask=real, other=0.0),
    ).to(exact)
    sum_dy = tl.where(
        aux,
        tl.load(grad_bias1 + channel, mask=synthetic, other=0.0),
        tl.load(grad_bias0 + channel, mask=real, other=0.0),
    ).to(exact)
    count = tl.where(aux, count1, count0).to(exact)
    mean_dy = sum_dy / count
    proj = invstd * sum_dy_xhat / count  # mean(dy * (x - mean)) * invstd^2
    dy = tl.load(grad_ptr + offs, mask=inside, other=0.0).to(exact)
    x = tl.load(x_ptr + offs, mask=inside, other=0.0).to(exact)
    grad_x = (dy - mean_dy - (x - mean) * proj) * (invstd * weight)
    tl.store(out_ptr + offs, grad_x.to(out_ptr.dtype.element_ty), mask=inside)


PARAMETERS = tuple(inspect.signature(_input_grad_body).parameters)


@functools.cache
def _kernel(interpret: bool) -> Any:
    """The jitted kernel; Triton decides at jit time whether it is compiled or interpreted,
    so each choice gets its own."""
    del interpret  # the cache key: triton.jit reads TRITON_INTERPRET itself
    return triton.jit(_input_grad_body)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def channel_stride(x: torch.Tensor) -> int | None:
    """Elements between one channel and the next in x's dense layout (the product of the
    spatial sizes when contiguous, 1 in channels_last), or None for a layout the kernel
    does not address (strided views)."""
    if x.is_contiguous():
        return x[0, 0].numel() if x.ndim > 2 else 1
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return 1
    if x.ndim == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return 1
    return None


def usable(grad: torch.Tensor, x: torch.Tensor, affine: bool = True) -> bool:
    """Whether the kernel can write this gradient: Triton present, a GPU (or Triton's
    interpreter), both halves with affine weights (without, aten returns the reductions in
    the input's precision), and the gradient laid out as the input."""
    if triton is None or not affine or x.ndim < 2 or grad.stride() != x.stride():
        return False
    if not (x.device.type == "cuda" or _interpreting()):
        return False
    return x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) and (
        channel_stride(x) is not None
    )


def two_halves_input_grad(
    grad: torch.Tensor, x: torch.Tensor, split: int,
    halves: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
) -> torch.Tensor:  # fmt: skip
    """The input gradient of batch norm applied to x[:split] and x[split:] apart, in one
    pass. `halves` holds, per half: weight, saved mean, saved 1/std, and aten's weight and
    bias gradients of that half (sum(dy * x_hat) and sum(dy))."""
    inner = channel_stride(x)
    assert inner is not None
    per_channel = x[0].numel() // x.shape[1]  # values per sample and channel
    out = torch.empty_like(x)
    numel = x.numel()
    _kernel(_interpreting())[(triton.cdiv(numel, BLOCK),)](
        grad, x, out, *halves[0], *halves[1], numel, split * x[0].numel(), inner, x.shape[1],
        split * per_channel, (x.shape[0] - split) * per_channel, BLOCK=BLOCK,
    )  # fmt: skip
    return out

"""Auxiliary batch norm (as in AdvProp): the synthetic part of each batch goes through BN
layers of its own, so its statistics never touch the BN that real images and evaluation use.

Every BatchNorm layer (1d, 2d, 3d, and timm's `BatchNormAct2d`, which subclasses
BatchNorm2d and carries its activation and drop) becomes an `AuxBatchNorm` holding the
original layer as `main` and a deep copy as `aux`. Deep copies keep whatever the layer
does after normalising: timm's `convert_splitbn_model` rebuilds plain BatchNorm2d layers
and so drops BatchNormAct2d's activation, and it cannot handle BatchNorm1d.

A batch is laid out real first, synthetic after; `real_first(model, n)` tells every
layer where the split is. In eval mode, or with no split set, only `main` runs.

Models without batch norm (ViT, DeiT, Swin, ConvNeXt) have nothing to split; with
`train.aux_norm: layernorm` every LayerNorm becomes an `AuxLayerNorm` instead: its
statistics are per sample anyway, so what the synthetic part gets of its own is an affine
pair (weight, bias). It does not keep synthetic statistics out of anything (there are no
running statistics); it only lets the two domains scale and shift their features apart.

Speed: the obvious form, `cat([main(x[:n]), aux(x[n:])])`, costs a copy of every BN
output in the forward pass and, in the backward pass, a zero-filled full-size gradient per
slice plus their sum: about seven extra passes over each activation (timm's split BN, which
is built that way, trains ResNet-50 22% slower). `_TwoBatchNorms` runs the same aten
kernels F.batch_norm runs, each writing its slice of one output in place; its results are
bit-identical to the obvious form, which remains for layers the fused kernels cannot stand
for. On a GPU, one Triton kernel (`aux_bn_kernel`) then writes both halves' input gradients
from aten's reductions, instead of copying in each half's (aten's backward has no out=
form): equal to aten's to float rounding, not bit for bit. Under torch.compile,
`_pointwise_two_bns` writes both as batch statistics of two slices and one per-sample scale
and shift, which the compiler fuses as it fuses a plain BN (the fused kernels, opaque to the
compiler, were slower there: 0.90x plain BN against 0.98x in a trial on 2 CPU cores).
EfficientNet-B0 on 2 CPU cores trains at 0.89x plain BN's speed eager (the obvious form
0.85x) and 0.91x compiled (0.79x): benchmarks/results/train_speed_cpu.json.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from timm.layers import BatchNormAct2d
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.batchnorm import _BatchNorm

from diversynth.models import aux_bn_kernel

_PLAIN_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

# Both halves' input gradients written by one Triton kernel (aux_bn_kernel) where it can
# run (a GPU); off, each half's comes from aten and is copied in (the benchmarks compare).
ONE_PASS_INPUT_GRAD = True


def _fusable(layer: _BatchNorm) -> bool:
    """Whether the layer is exactly a BatchNorm whose work the fused kernels do: torch's
    own classes, or timm's BatchNormAct2d with a parameter-free drop and activation (main
    and aux then apply the same function after normalising, so one call serves both)."""
    if type(layer) in _PLAIN_BN:
        return True
    if type(layer) is BatchNormAct2d:
        after = (layer.drop, layer.act)
        return not any(True for m in after for _ in [*m.parameters(), *m.buffers()])
    return False


def _momentum(layer: _BatchNorm) -> float:
    """The running-average factor for this step, counting the step as _BatchNorm does."""
    if layer.track_running_stats and layer.num_batches_tracked is not None:
        layer.num_batches_tracked.add_(1)
        if layer.momentum is None:
            return 1.0 / float(layer.num_batches_tracked)
    return 0.0 if layer.momentum is None else layer.momentum


def _stats_dtype(x: torch.Tensor, layer: _BatchNorm) -> torch.dtype:
    """The dtype aten's batch norm keeps batch mean and 1/std in (its `out=` form takes
    them preallocated): the accumulate type on CUDA, the parameters' type on the CPU."""
    if x.device.type == "cuda":
        return torch.float64 if x.dtype == torch.float64 else torch.float32
    ref = layer.weight if layer.weight is not None else layer.running_mean
    return x.dtype if ref is None else ref.dtype


class _TwoBatchNorms(torch.autograd.Function):
    """Batch norm of x[:split] with `main`'s parameters and of x[split:] with `aux`'s, in
    training mode, written into one output; running statistics updated in place."""

    # ctx is Any: it carries this Function's own fields (split, eps) besides torch's

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, split: int, main: _BatchNorm, aux: _BatchNorm,
        *params: torch.Tensor | None,  # main's weight and bias, then aux's: for autograd
    ) -> torch.Tensor:  # fmt: skip
        y = torch.empty_like(x)
        saved = []
        for part, layer, (weight, bias) in (
            (slice(0, split), main, params[:2]),
            (slice(split, None), aux, params[2:]),
        ):
            track = layer.track_running_stats
            dtype = _stats_dtype(x, layer)
            mean, invstd = x.new_empty(0, dtype=dtype), x.new_empty(0, dtype=dtype)
            torch.ops.aten.native_batch_norm.out(
                x[part], weight, bias,
                layer.running_mean if track else None, layer.running_var if track else None,
                True, _momentum(layer), layer.eps,
                out=y[part], save_mean=mean, save_invstd=invstd,
            )  # fmt: skip
            saved += [weight, mean, invstd]
        ctx.save_for_backward(x, *saved)
        ctx.split, ctx.eps = split, (main.eps, aux.eps)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, *saved = ctx.saved_tensors
        need = ctx.needs_input_grad  # x, split, main, aux, then the four parameters
        parts = (slice(0, ctx.split), slice(ctx.split, None))
        affine = saved[0] is not None and saved[3] is not None
        one_pass = need[0] and ONE_PASS_INPUT_GRAD and aux_bn_kernel.usable(grad, x, affine)
        grad_x = torch.empty_like(x) if need[0] and not one_pass else None
        param_grads: list[torch.Tensor | None] = []
        halves = []
        for k, part in enumerate(parts):
            weight, mean, invstd = saved[3 * k : 3 * k + 3]
            # the one-pass kernel needs both reductions, whichever gradients autograd wants
            mask = [grad_x is not None, one_pass or need[4 + 2 * k], one_pass or need[5 + 2 * k]]
            grad_part, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
                grad[part], x[part], weight, None, None, mean, invstd, True, ctx.eps[k], mask
            )
            if grad_x is not None:
                grad_x[part].copy_(grad_part)  # aten has no out= form: see aux_bn_kernel
            halves.append((weight, mean, invstd, grad_weight, grad_bias))
            keep = (need[4 + 2 * k], need[5 + 2 * k])
            param_grads += [g if wanted else None for g, wanted in
                            zip((grad_weight, grad_bias), keep, strict=True)]  # fmt: skip
        if one_pass:
            grad_x = aux_bn_kernel.two_halves_input_grad(grad, x, ctx.split, halves)
        return (grad_x, None, None, None, *param_grads)


def _pointwise_two_bns(
    x: torch.Tensor, split: int, main: _BatchNorm, aux: _BatchNorm
) -> torch.Tensor:
    """The same as `_TwoBatchNorms`, in plain tensor ops for the compiler to fuse."""
    dims = [0, *range(2, x.ndim)]
    exact = x.to(torch.promote_types(x.dtype, torch.float32))  # statistics in float32 or up
    scales, shifts = [], []
    for part, layer in ((exact[:split], main), (exact[split:], aux)):
        var, mean = torch.var_mean(part, dim=dims, correction=0)
        momentum = _momentum(layer)
        if layer.track_running_stats and layer.running_mean is not None:
            assert layer.running_var is not None  # tracked with the mean
            count = part.numel() // part.shape[1]
            with torch.no_grad():  # as aten does: the running variance is the unbiased one
                layer.running_mean.lerp_(mean.to(layer.running_mean.dtype), momentum)
                unbiased = var * (count / max(count - 1, 1))
                layer.running_var.lerp_(unbiased.to(layer.running_var.dtype), momentum)
        scale = torch.rsqrt(var + layer.eps)
        if layer.weight is not None:
            scale = scale * layer.weight
        shift = -mean * scale
        if layer.bias is not None:
            shift = shift + layer.bias
        scales.append(scale)
        shifts.append(shift)
    real = (torch.arange(x.shape[0], device=x.device) < split)[:, None]
    shape = (x.shape[0], x.shape[1]) + (1,) * (x.ndim - 2)
    scale = torch.where(real, scales[0], scales[1]).view(shape)
    shift = torch.where(real, shifts[0], shifts[1]).view(shape)
    return (exact * scale + shift).to(x.dtype)


class _AuxNorm(nn.Module):
    """A norm layer (`main`) and its twin (`aux`) for the synthetic part of each batch."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.main = layer
        self.aux = copy.deepcopy(layer)
        self.split: int | None = None  # leading samples of the batch that are real

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        split = self.split
        if not self.training or split is None or split >= x.shape[0]:
            return self.main(x)
        if split <= 0:
            return self.aux(x)
        return self._both(x, split)

    def _both(self, x: torch.Tensor, split: int) -> torch.Tensor:
        return torch.cat([self.main(x[:split]), self.aux(x[split:])])


class AuxBatchNorm(_AuxNorm):
    main: _BatchNorm  # the layer given, and its copy
    aux: _BatchNorm

    def __init__(self, layer: _BatchNorm) -> None:
        super().__init__(layer)
        self.fused = _fusable(layer)

    def _both(self, x: torch.Tensor, split: int) -> torch.Tensor:
        if not self.fused or x.device.type not in ("cpu", "cuda"):
            return super()._both(x, split)
        main, aux = self.main, self.aux
        if torch.compiler.is_compiling():
            y = _pointwise_two_bns(x, split, main, aux)
        else:
            y = _TwoBatchNorms.apply(
                x, split, main, aux, main.weight, main.bias, aux.weight, aux.bias
            )
        if isinstance(main, BatchNormAct2d):
            y = main.act(main.drop(y))
        return y


class AuxLayerNorm(_AuxNorm):
    """A LayerNorm with a second affine pair for the synthetic part of a batch. Each sample
    is normalised on its own, so the real part's output is exactly what it gets alone."""


def convert_aux_ln(model: nn.Module) -> int:
    """Give every LayerNorm of the model an auxiliary affine pair (in place); the count."""
    count = 0
    for name, child in model.named_children():
        if isinstance(child, nn.LayerNorm):
            setattr(model, name, AuxLayerNorm(child))
            count += 1
        elif not isinstance(child, _AuxNorm):
            count += convert_aux_ln(child)
    return count


def convert_aux_bn(model: nn.Module) -> nn.Module:
    """Give every BatchNorm layer of the model an auxiliary twin (in place; returns it)."""
    for name, child in model.named_children():
        if isinstance(child, _BatchNorm):
            setattr(model, name, AuxBatchNorm(child))
        elif not isinstance(child, AuxBatchNorm):
            convert_aux_bn(child)
    return model


def has_aux_bn(model: nn.Module) -> bool:
    """Whether the model has auxiliary norm layers (batch norm or layer norm)."""
    return any(isinstance(m, _AuxNorm) for m in model.modules())


@contextlib.contextmanager
def real_first(model: nn.Module, real: int) -> Iterator[None]:
    """Within the block, batches hold `real` real images first, then synthetic ones."""
    layers = [m for m in model.modules() if isinstance(m, _AuxNorm)]
    for layer in layers:
        layer.split = real
    try:
        yield
    finally:
        for layer in layers:
            layer.split = None


def export_plain_bn(model: nn.Module) -> nn.Module:
    """A copy of the model with each auxiliary norm layer replaced by its main layer: the
    stock architecture, loadable by the model's own class with the usual state-dict keys."""
    plain = copy.deepcopy(model)

    def strip(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, _AuxNorm):
                setattr(module, name, child.main)
            else:
                strip(child)

    strip(plain)
    return plain

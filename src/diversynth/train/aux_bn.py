"""Auxiliary batch norm (as in AdvProp): the synthetic part of each batch goes through BN
layers of its own, so its statistics never touch the BN that real images and evaluation use.

Every BatchNorm layer (1d, 2d, 3d, and timm's `BatchNormAct2d`, which subclasses
BatchNorm2d and carries its activation and drop) becomes an `AuxBatchNorm` holding the
original layer as `main` and a deep copy as `aux`. Deep copies keep whatever the layer
does after normalising: timm's `convert_splitbn_model` rebuilds plain BatchNorm2d layers
and so drops BatchNormAct2d's activation, and it cannot handle BatchNorm1d.

A batch is laid out real first, synthetic after; `real_first(model, n)` tells every
layer where the split is. In eval mode, or with no split set, only `main` runs.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class AuxBatchNorm(nn.Module):
    def __init__(self, layer: _BatchNorm):
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
        return torch.cat([self.main(x[:split]), self.aux(x[split:])])


def convert_aux_bn(model: nn.Module) -> nn.Module:
    """Give every BatchNorm layer of the model an auxiliary twin (in place; returns it)."""
    for name, child in model.named_children():
        if isinstance(child, _BatchNorm):
            setattr(model, name, AuxBatchNorm(child))
        elif not isinstance(child, AuxBatchNorm):
            convert_aux_bn(child)
    return model


def has_aux_bn(model: nn.Module) -> bool:
    return any(isinstance(m, AuxBatchNorm) for m in model.modules())


@contextlib.contextmanager
def real_first(model: nn.Module, real: int) -> Iterator[None]:
    """Within the block, batches hold `real` real images first, then synthetic ones."""
    layers = [m for m in model.modules() if isinstance(m, AuxBatchNorm)]
    for layer in layers:
        layer.split = real
    try:
        yield
    finally:
        for layer in layers:
            layer.split = None


def export_plain_bn(model: nn.Module) -> nn.Module:
    """A copy of the model with each AuxBatchNorm replaced by its main layer: the stock
    architecture, loadable by the model's own class with the usual state-dict keys."""
    plain = copy.deepcopy(model)

    def strip(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, AuxBatchNorm):
                setattr(module, name, child.main)
            else:
                strip(child)

    strip(plain)
    return plain

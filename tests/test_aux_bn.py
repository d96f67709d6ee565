"""Auxiliary batch norm: which statistics each part of a batch may touch, eval, export."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from diversynth.train.aux_bn import AuxBatchNorm, convert_aux_bn, export_plain_bn, real_first
from diversynth.train.model import export_plain, load_checkpoint, save_checkpoint

# test_efficientnet: timm's tiny EfficientNet, built of BatchNormAct2d (BN + activation)
MODELS = ["test_efficientnet", "test_resnet"]


class WithBatchNorm1d(nn.Module):
    """A small net with BatchNorm2d and BatchNorm1d, which timm's split-BN cannot convert."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn2d = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 6)
        self.bn1d = nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn2d(self.conv(x))).mean((2, 3))
        return self.bn1d(self.fc(x))


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "bn1d":
        return WithBatchNorm1d()
    return timm.create_model(name, num_classes=5)


def stats(model: nn.Module, which: str) -> list[torch.Tensor]:
    return [
        getattr(m, which).running_mean.clone()
        for m in model.modules()
        if isinstance(m, AuxBatchNorm)
    ]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("name", [*MODELS, "bn1d"])
def test_each_part_of_a_batch_touches_only_its_own_statistics(name: str) -> None:
    model = convert_aux_bn(build(name)).train()
    batch = torch.randn(8, 3, 32, 32)
    main, aux = stats(model, "main"), stats(model, "aux")
    with torch.no_grad(), real_first(model, 0):  # all synthetic
        model(batch)
    assert same(stats(model, "main"), main) and not same(stats(model, "aux"), aux)
    aux = stats(model, "aux")
    with torch.no_grad(), real_first(model, 8):  # all real
        model(batch)
    assert same(stats(model, "aux"), aux) and not same(stats(model, "main"), main)


@pytest.mark.parametrize("name", [*MODELS, "bn1d"])
def test_unequal_split_matches_the_real_part_alone(name: str) -> None:
    mixed = convert_aux_bn(build(name)).train()
    alone = copy.deepcopy(mixed)
    real, synthetic = torch.randn(3, 3, 32, 32), torch.randn(5, 3, 32, 32) * 3 + 1
    with torch.no_grad():
        with real_first(mixed, 3):
            out_mixed = mixed(torch.cat([real, synthetic]))
        with real_first(alone, 3):
            out_alone = alone(real)
    # the real images see only real statistics, whatever synthetic images share the batch
    torch.testing.assert_close(out_mixed[:3], out_alone)
    assert same(stats(mixed, "main"), stats(alone, "main"))


@pytest.mark.parametrize("name", MODELS)
def test_eval_uses_main_bn_only_and_keeps_the_activation(name: str) -> None:
    plain = build(name).eval()
    if name == "test_efficientnet":
        assert any(isinstance(m, BatchNormAct2d) for m in plain.modules())
    converted = convert_aux_bn(copy.deepcopy(plain)).eval()
    for layer in converted.modules():  # garbage in every auxiliary BN: eval must not see it
        if isinstance(layer, AuxBatchNorm):
            layer.aux.running_mean.fill_(100.0)
            layer.aux.running_var.fill_(1e-3)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad(), real_first(converted, 2):
        torch.testing.assert_close(converted(x), plain(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_export_loads_into_the_stock_timm_model(name: str, tmp_path: Path) -> None:
    model = convert_aux_bn(build(name)).train()
    with torch.no_grad(), real_first(model, 3):  # give main and aux different statistics
        model(torch.cat([torch.randn(3, 3, 32, 32), torch.randn(5, 3, 32, 32) * 4]))
    checkpoint, exported = tmp_path / "model.safetensors", tmp_path / "plain.safetensors"
    save_checkpoint(checkpoint, model, {"model": name, "num_classes": 5, "aux_bn": True})
    reloaded, meta = load_checkpoint(checkpoint)
    assert meta["aux_bn"] and sum(isinstance(m, AuxBatchNorm) for m in reloaded.modules())
    export_plain(checkpoint, exported)
    from safetensors.torch import load_file

    stock = timm.create_model(name, num_classes=5)
    stock.load_state_dict(load_file(str(exported)))  # strict: the stock keys, nothing else
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model.eval()(x)
        torch.testing.assert_close(stock.eval()(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(reloaded.eval()(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(export_plain_bn(model).eval()(x), expected, rtol=0, atol=0)

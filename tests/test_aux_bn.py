"""Auxiliary batch norm: which statistics each part of a batch may touch, eval, export."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from diversynth.models import aux_bn, aux_bn_kernel
from diversynth.models.aux_bn import AuxBatchNorm, convert_aux_bn, export_plain_bn, real_first
from diversynth.models.classifier import export_plain, load_checkpoint, save_checkpoint

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


# Between BN layers, convolutions and matrix products run oneDNN's kernels, which may give an
# image other bits depending on the rest of its batch or the memory layout of its input
# (seen with the AVX-512 kernels, not with AVX2's). Whole-model comparisons of batches that
# differ in either are therefore to float32 rounding; the BN layers themselves are compared
# to the bit (test_fused_layer_equals_two_separate_batch_norms).
ROUNDING = {"rtol": 1e-5, "atol": 1e-6}


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
    # (batches of 8 and of 3: to float32 rounding, see ROUNDING)
    torch.testing.assert_close(out_mixed[:3], out_alone, **ROUNDING)
    for got, want in zip(stats(mixed, "main"), stats(alone, "main"), strict=True):
        torch.testing.assert_close(got, want, **ROUNDING)


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
    # exact on every kernel set: in eval the converted model runs the plain model's
    # operations on the same batch, layer for layer
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
    with torch.no_grad():  # exact on every kernel set: the same operations on the same batch
        expected = model.eval()(x)
        torch.testing.assert_close(stock.eval()(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(reloaded.eval()(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(export_plain_bn(model).eval()(x), expected, rtol=0, atol=0)


def train_step(model: nn.Module, x: torch.Tensor, real: int) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    with real_first(model, real):
        model(x).square().mean().backward()
    return x.grad


def assert_same_state(model: nn.Module, reference: nn.Module, state: dict, grads: dict) -> None:
    """Parameters and buffers (running statistics, step counts), then parameter gradients."""
    pairs = zip(model.state_dict().items(), reference.state_dict().items(), strict=True)
    for (key, a), (_, b) in pairs:
        torch.testing.assert_close(a, b, **state, msg=key)
    pairs = zip(model.named_parameters(), reference.named_parameters(), strict=True)
    for (key, a), (_, b) in pairs:
        torch.testing.assert_close(a.grad, b.grad, **grads, msg=key)


def reference_copy(model: nn.Module) -> nn.Module:
    """The same model doing aux BN the obvious way: cat([main(real), aux(synthetic)])."""
    reference = copy.deepcopy(model)
    for layer in reference.modules():
        if isinstance(layer, AuxBatchNorm):
            layer.fused = False
    return reference


LAYERS = {
    "bn2d": lambda: nn.BatchNorm2d(8),
    "bn_act": lambda: BatchNormAct2d(8),  # timm's BN + activation in one layer
    "bn1d": lambda: nn.BatchNorm1d(8),
}


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_layer_equals_two_separate_batch_norms(kind: str, channels_last: bool) -> None:
    """The fast path (one output written in place by aten's batch-norm kernels) gives the
    bits of the obvious one, cat([main(real), aux(synthetic)]): output, input gradient,
    running statistics and step counts after two steps. Exact on every kernel set: both
    run the same aten kernels on the same slices."""
    torch.manual_seed(0)
    fused = AuxBatchNorm(LAYERS[kind]()).train()
    with torch.no_grad():  # parameters that are not the identity
        for param in fused.parameters():
            param.uniform_(0.5, 1.5)
    reference = copy.deepcopy(fused)
    reference.fused = False
    assert fused.fused
    shape = (8, 8, 5, 6) if kind != "bn1d" else (8, 8)
    x = torch.cat([torch.randn(3, *shape[1:]), torch.randn(5, *shape[1:]) * 2 + 1])
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(shape)
    for _ in range(2):  # the second step normalises with updated running averages too
        results = []
        for layer in (fused, reference):
            inputs = x.clone().requires_grad_(True)
            layer.split = 3
            out = layer(inputs)
            out.backward(upstream)
            results.append((out.detach(), inputs.grad))
        (out_f, grad_f), (out_r, grad_r) = results
        torch.testing.assert_close(out_f, out_r, rtol=0, atol=0)
        torch.testing.assert_close(grad_f, grad_r, rtol=0, atol=0)
    for (key, a), (_, b) in zip(fused.state_dict().items(), reference.state_dict().items(),
                                strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=key)
    for (key, a), (_, b) in zip(fused.named_parameters(), reference.named_parameters(),
                                strict=True):  # fmt: skip
        # weight and bias gradients: the same sums, in another order where a slice's
        # layout differs (the obvious form reads a slice of cat's gradient)
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-8, msg=key)


@pytest.mark.parametrize("name", [*MODELS, "bn1d"])
def test_fused_kernels_equal_two_separate_batch_norms(name: str) -> None:
    """Whole models with the fused layers train as with the obvious form: input gradients,
    running statistics, step counts and parameters after two steps, and parameter
    gradients (to float32 rounding: see ROUNDING)."""
    fused = convert_aux_bn(build(name)).train()
    layers = [m for m in fused.modules() if isinstance(m, AuxBatchNorm)]
    assert layers and all(layer.fused for layer in layers)
    reference = reference_copy(fused)
    x = torch.cat([torch.randn(3, 3, 32, 32), torch.randn(5, 3, 32, 32) * 2 + 1])
    x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(2):  # the second step normalises with updated running averages too
        grad_fused, grad_reference = train_step(fused, x, 3), train_step(reference, x, 3)
    torch.testing.assert_close(grad_fused, grad_reference, **ROUNDING)
    assert_same_state(fused, reference, ROUNDING, ROUNDING)


@pytest.mark.parametrize("name", [*MODELS, "bn1d"])
def test_form_for_the_compiler_matches_two_separate_batch_norms(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under torch.compile aux BN takes a form of plain tensor ops (slice statistics, one
    per-sample scale and shift); run here in eager mode and in float64 (in float32 the two
    forms sum in different orders), it matches the obvious form, running stats included."""
    model = convert_aux_bn(build(name)).train().double()
    reference = reference_copy(model)
    x = torch.cat([torch.randn(3, 3, 32, 32), torch.randn(5, 3, 32, 32) * 2 + 1]).double()
    grad_reference = train_step(reference, x, 3)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    grad = train_step(model, x, 3)
    exact = {"rtol": 1e-9, "atol": 1e-12}
    torch.testing.assert_close(grad, grad_reference, **exact)
    assert_same_state(model, reference, exact, exact)


@pytest.mark.slow
def test_compiled_model_follows_the_split_of_each_batch() -> None:
    """Under torch.compile, with a new split the model is traced again rather than run with
    the old one's slices: each step matches the obvious form, running statistics included
    (float64, as above). The aot_eager backend runs what inductor is given (dynamo's graph
    and guards, the statistics updated through functionalised autograd) without inductor's
    C++ code generation, which takes over a minute on 2 cores."""
    model = convert_aux_bn(build("bn1d")).train().double()
    reference = reference_copy(model)
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.cat([torch.randn(3, 3, 32, 32), torch.randn(5, 3, 32, 32) * 2 + 1]).double()
    exact = {"rtol": 1e-9, "atol": 1e-12}
    for real in (3, 6, 3):
        inputs = x.clone().requires_grad_(True)
        with real_first(model, real):
            compiled(inputs).square().mean().backward()
        torch.testing.assert_close(inputs.grad, train_step(reference, x, real), **exact)
        assert_same_state(model, reference, exact, exact)


TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def test_auxiliary_layernorm_leaves_the_real_part_as_it_is_alone(tmp_path: Path) -> None:
    """A ViT with train.aux_norm: layernorm: the real part of a batch gets exactly the
    outputs it gets alone; the synthetic part's own affine pairs learn; the export loads
    strictly into the stock timm model and gives identical eval outputs."""
    from diversynth.models.aux_bn import AuxLayerNorm, convert_aux_ln

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=5, **TINY_VIT)
    plain = copy.deepcopy(model)
    assert convert_aux_ln(model) == sum(isinstance(m, nn.LayerNorm) for m in plain.modules())
    real, synthetic = torch.randn(3, 3, 32, 32), torch.randn(5, 3, 32, 32) * 3
    model.train(), plain.train()
    with torch.no_grad():
        for layer in model.modules():  # the synthetic pairs drift from the main ones
            if isinstance(layer, AuxLayerNorm):
                layer.aux.weight.mul_(1.5)
                layer.aux.bias.add_(0.3)
        with real_first(model, 3):
            both = model(torch.cat([real, synthetic]))
        torch.testing.assert_close(both[:3], plain(real), rtol=0, atol=0)
        assert not torch.allclose(both[3:], plain(synthetic))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with real_first(model, 3):
        model(torch.cat([real, synthetic])).square().mean().backward()
    aux_grads = [m.aux.weight.grad for m in model.modules() if isinstance(m, AuxLayerNorm)]
    assert all(g is not None and g.abs().sum() > 0 for g in aux_grads)
    optimizer.step()

    checkpoint, exported = tmp_path / "vit.safetensors", tmp_path / "plain.safetensors"
    meta = {"model": "vit_tiny_patch16_224", "model_kwargs": TINY_VIT, "num_classes": 5,
            "aux_bn": True, "aux_norm": "layernorm"}  # fmt: skip
    save_checkpoint(checkpoint, model, meta)
    reloaded, _ = load_checkpoint(checkpoint)
    assert sum(isinstance(m, AuxLayerNorm) for m in reloaded.modules()) == len(aux_grads)
    export_plain(checkpoint, exported)
    from safetensors.torch import load_file

    stock = timm.create_model("vit_tiny_patch16_224", num_classes=5, **TINY_VIT)
    stock.load_state_dict(load_file(str(exported)))  # strict: the stock keys, nothing else
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model.eval()(x)
        torch.testing.assert_close(stock.eval()(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(reloaded.eval()(x), expected, rtol=0, atol=0)


def test_auxiliary_layernorm_on_a_model_without_layernorm_is_refused() -> None:
    from diversynth.models.classifier import CheckpointError, convert_auxiliary

    with pytest.raises(CheckpointError, match="train.aux_norm: layernorm, but the model has no"):
        convert_auxiliary(build("resnet10t"), "layernorm")


def _one_pass_interpreted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-pass input-gradient kernel (Triton) on this CPU, through Triton's
    interpreter: the same kernel source a GPU compiles."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(aux_bn, "ONE_PASS_INPUT_GRAD", True)


def _input_grad(layer: nn.Module, x: torch.Tensor, upstream: torch.Tensor, split: int,
                one_pass: bool, monkeypatch: pytest.MonkeyPatch) -> tuple:  # fmt: skip
    monkeypatch.setattr(aux_bn, "ONE_PASS_INPUT_GRAD", one_pass)
    layer = copy.deepcopy(layer)
    inputs = x.clone().requires_grad_(True)
    layer.split = split
    layer(inputs).backward(upstream)
    return inputs.grad, [p.grad for p in layer.parameters()]


@pytest.mark.parametrize(
    ("shape", "layout", "split"),
    [((8, 6, 5, 3), "contiguous", 3), ((8, 6, 5, 3), "channels_last", 1),
     ((8, 6, 5, 3), "channels_last", 7), ((9, 6), "contiguous", 4),
     ((4, 6, 3, 2, 2), "channels_last_3d", 2)],
)  # fmt: skip
def test_one_pass_input_gradient_matches_aten(
    shape: tuple, layout: str, split: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both halves' input gradients written by one kernel from aten's reductions: in
    float64 the gradient aten's own backward gives, to rounding, in every layout the
    kernel addresses (samples outermost, channels strided or adjacent) and any split; the
    parameter gradients are aten's, untouched."""
    _one_pass_interpreted(monkeypatch)
    kind = {2: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[len(shape)]
    torch.manual_seed(0)
    layer = AuxBatchNorm(kind(shape[1])).train().double()
    with torch.no_grad():
        for param in layer.parameters():
            param.uniform_(0.5, 1.5)
    x = torch.randn(shape, dtype=torch.float64) * 3 + 2
    upstream = torch.randn(shape, dtype=torch.float64)
    if layout != "contiguous":
        form = getattr(torch, layout)
        x, upstream = x.contiguous(memory_format=form), upstream.contiguous(memory_format=form)
    assert aux_bn_kernel.usable(upstream, x)
    grad, params = _input_grad(layer, x, upstream, split, True, monkeypatch)
    grad_aten, params_aten = _input_grad(layer, x, upstream, split, False, monkeypatch)
    assert grad.stride() == x.stride()
    torch.testing.assert_close(grad, grad_aten, rtol=1e-12, atol=1e-12)
    for a, b in zip(params, params_aten, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_one_pass_input_gradient_in_bfloat16_is_as_close_as_aten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In bfloat16 (the GPU training precision) the kernel computes in float32 as aten does:
    its input gradient is as close to the float64 truth as aten's, to one bfloat16 step
    (Triton's interpreter truncates where a GPU rounds to nearest when narrowing to
    bfloat16, so no closer bound holds here)."""
    _one_pass_interpreted(monkeypatch)
    torch.manual_seed(0)
    layer = AuxBatchNorm(nn.BatchNorm2d(16)).train()
    shape = (8, 16, 6, 6)
    x = (torch.randn(shape) * 3 + 2).to(torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(shape).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    truth, _ = _input_grad(layer.double(), x.double(), upstream.double(), 5, False, monkeypatch)
    layer = layer.float()
    grad, _ = _input_grad(layer, x, upstream, 5, True, monkeypatch)
    grad_aten, _ = _input_grad(layer, x, upstream, 5, False, monkeypatch)
    assert grad.dtype == torch.bfloat16
    error = (grad.double() - truth).abs()
    error_aten = (grad_aten.double() - truth).abs()
    step = truth.abs().clamp_min(2**-10) * 2**-7  # one bfloat16 step at each value
    assert (error <= error_aten + step).all()


def test_one_pass_kernel_trains_a_model_as_aten_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole model (timm's test ResNet, channels_last) trained two steps in float64 with
    the kernel: input gradients, parameters, running statistics and parameter gradients of
    the aten path, to rounding."""
    _one_pass_interpreted(monkeypatch)
    model = convert_aux_bn(build("test_resnet")).train().double()
    reference = copy.deepcopy(model)
    x = torch.cat([torch.randn(3, 3, 32, 32), torch.randn(5, 3, 32, 32) * 2 + 1]).double()
    x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(2):
        monkeypatch.setattr(aux_bn, "ONE_PASS_INPUT_GRAD", True)
        grad = train_step(model, x, 3)
        monkeypatch.setattr(aux_bn, "ONE_PASS_INPUT_GRAD", False)
        grad_reference = train_step(reference, x, 3)
    exact = {"rtol": 1e-9, "atol": 1e-12}
    torch.testing.assert_close(grad, grad_reference, **exact)
    assert_same_state(model, reference, exact, exact)


def test_one_pass_kernel_only_where_it_applies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a CPU the kernel would run only interpreted (hundreds of times slower than aten):
    training there keeps aten's path, as do layers without affine weights and gradients
    laid out unlike the input."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(4, 3, 5, 5)
    assert not aux_bn_kernel.usable(x, x)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert aux_bn_kernel.usable(x, x)
    assert not aux_bn_kernel.usable(x, x, affine=False)  # no weights: aten's path
    assert not aux_bn_kernel.usable(x.transpose(2, 3), x)  # a gradient laid out otherwise


@pytest.mark.parametrize("arch", [80, 90])  # Ampere (A100), Hopper (H100, H200)
def test_one_pass_kernel_compiles_for_the_gpus_it_runs_on(arch: int) -> None:
    """The interpreter is lenient where the compiler is not: the kernel also compiles to
    a GPU binary for the training precisions (Triton's own compiler and ptxas, no GPU
    needed), and narrows float32 to bfloat16 rounding to nearest, as aten does."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    for data, table in (("bf16", "fp32"), ("fp32", "fp32")):
        for index in ("i32", "i64"):  # Triton passes sizes as i64 from 2**31 elements on
            half = [f"*{table}"] * 5  # weight, mean, 1/std, weight and bias gradients
            sizes = ("numel", "split_at", "inner", "channels", "count0", "count1")
            pointers = [f"*{data}"] * 3 + half + half
            signature = dict(zip(aux_bn_kernel.PARAMETERS, pointers, strict=False))
            signature |= dict.fromkeys(sizes, index) | {"BLOCK": "constexpr"}
            source = ASTSource(fn=aux_bn_kernel._kernel(False), signature=signature,
                               constexprs={"BLOCK": aux_bn_kernel.BLOCK})  # fmt: skip
            binary = triton.compile(source, target=GPUTarget("cuda", arch, 32))
            assert binary.asm["cubin"]
            if data == "bf16":
                assert "cvt.rn.bf16.f32" in binary.asm["ptx"]

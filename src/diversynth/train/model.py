"""timm classifiers saved as safetensors, with what rebuilds them in the file's metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from diversynth.errors import UsageError
from diversynth.rundir import atomic_open
from diversynth.train.aux_bn import convert_aux_bn, convert_aux_ln, export_plain_bn


class CheckpointError(UsageError, ValueError):
    pass


def create_classifier(name: str, num_classes: int, **kwargs: Any) -> torch.nn.Module:
    """A timm model with random weights; `kwargs` go to `timm.create_model`."""
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


def convert_auxiliary(model: torch.nn.Module, kind: str) -> None:
    """Give the model's norm layers of `kind` (train.aux_norm) their auxiliary twins."""
    if kind == "layernorm":
        if not convert_aux_ln(model):
            raise CheckpointError("train.aux_norm: layernorm, but the model has no LayerNorm "
                                  "(use batchnorm for a model with batch norm)")  # fmt: skip
    else:
        convert_aux_bn(model)


def save_checkpoint(path: Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_open(path, "wb") as handle:
        handle.write(save(state, metadata={"diversynth": json.dumps(meta)}))


def load_checkpoint(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model as trained (with its auxiliary BN layers, if it had them) and its metadata."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = (handle.metadata() or {}).get("diversynth")
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a readable safetensors file ({exc}); diversynth "
            "loads weights as safetensors only"
        ) from None
    if meta is None:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has no diversynth metadata (model name, classes); "
            "bring outside weights in with `diversynth import-weights`"
        )
    meta = json.loads(meta)
    model = create_classifier(meta["model"], meta["num_classes"], **meta.get("model_kwargs", {}))
    if meta.get("aux_bn"):
        convert_auxiliary(model, meta.get("aux_norm", "batchnorm"))
    model.load_state_dict(load_file(str(path)))
    return model, meta


def export_plain(path: Path, out: Path) -> dict[str, Any]:
    """Write the checkpoint without auxiliary BN: the stock timm model's state dict (main BN
    kept), loadable with `timm.create_model(name, num_classes=N).load_state_dict(...)`."""
    model, meta = load_checkpoint(path)
    meta = {**meta, "aux_bn": False}
    save_checkpoint(out, export_plain_bn(model), meta)
    return meta

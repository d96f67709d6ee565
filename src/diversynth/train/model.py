"""timm classifiers saved as safetensors, with what rebuilds them in the file's metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from diversynth.rundir import atomic_open


def create_classifier(name: str, num_classes: int) -> torch.nn.Module:
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def save_checkpoint(path: Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_open(path, "wb") as handle:
        handle.write(save(state, metadata={"diversynth": json.dumps(meta)}))


def load_checkpoint(path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["diversynth"])
    model = create_classifier(meta["model"], meta["num_classes"])
    model.load_state_dict(load_file(str(path)))
    return model, meta

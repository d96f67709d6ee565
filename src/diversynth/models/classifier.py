"""timm classifiers saved as safetensors, with what rebuilds them in the file's metadata."""

from __future__ import annotations

import json
from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

import timm
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch.utils.data import DataLoader

from diversynth.errors import UsageError
from diversynth.models.aux_bn import convert_aux_bn, convert_aux_ln, export_plain_bn
from diversynth.models.safe_weights import loading
from diversynth.run.progress import progress_bar
from diversynth.run.rundir import atomic_open


class CheckpointError(UsageError, ValueError):
    pass


class ModelNameError(UsageError, ValueError):
    """A model name timm does not know, or weights that do not load."""


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


@torch.inference_mode()
def topk_accuracy(model: torch.nn.Module, loader: DataLoader, device: torch.device, label: str,
                  allowed: list[int] | None = None) -> dict[str, Any]:  # fmt: skip
    """Top-1 and top-5 (%); with `allowed`, every other class's logit is ruled out."""
    num_classes = getattr(model, "num_classes", None) or 1000
    k = min(5, len(allowed) if allowed is not None else num_classes)
    mask = None
    if allowed is not None:
        mask = torch.full((num_classes,), float("-inf"))
        mask[allowed] = 0.0
    hitsk = 0
    class_hits = torch.zeros(num_classes, dtype=torch.int64)
    class_images = torch.zeros(num_classes, dtype=torch.int64)
    with progress_bar() as bar:
        # the loaders evaluated hold map-style datasets, which have a length
        task = bar.add_task(label, total=len(cast(Sized, loader.dataset)), unit="images")
        for x, y in loader:
            logits = model(x.to(device)).float().cpu()
            if mask is not None:
                logits = logits + mask
            top = logits.topk(k, dim=1).indices
            class_hits += torch.bincount(y[top[:, 0] == y], minlength=num_classes)
            class_images += torch.bincount(y, minlength=num_classes)
            hitsk += (top == y[:, None]).any(dim=1).sum().item()
            bar.advance(task, len(y))
    total = int(class_images.sum())
    return {
        "images": total,
        "top1": round(100 * int(class_hits.sum()) / total, 3),
        f"top{k}": round(100 * hitsk / total, 3),
        **per_class_metrics(class_hits.tolist(), class_images.tolist()),
    }


def check_timm_name(name: str) -> None:
    problem = timm_name_problem(name)
    if problem:
        raise ModelNameError(f"--model: {problem}")


def timm_model(name: str, pretrained: bool, num_classes: int) -> tuple[torch.nn.Module, dict]:
    """Any timm model, with the preprocessing its pretrained config asks for."""
    import timm
    from timm.data import resolve_data_config

    check_timm_name(name)
    if pretrained:
        from diversynth.models.hub import offline_unless_answering

        offline_unless_answering([name])
    # timm's weights of some models are pickles; without a hub, none download
    with loading("--pretrained" if pretrained else "--model", name, ModelNameError):
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes)
    data = resolve_data_config({}, model=model)
    meta = {"model": name, "num_classes": num_classes, "image_size": data["input_size"][-1],
            "mean": list(data["mean"]), "std": list(data["std"]),
            "crop_pct": data["crop_pct"], "interpolation": data["interpolation"]}  # fmt: skip
    return model, meta


# timm takes hub and local weights by prefix as well as registered names
_TIMM_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


def timm_name_problem(name: str) -> str | None:
    import timm

    if name.startswith(_TIMM_PREFIXES) or timm.is_model(name):
        return None
    close = timm.list_models(f"*{name[:4]}*")[:3] if len(name) >= 4 else []
    hint = f"; close: {', '.join(close)}" if close else ""
    return f"not a timm model name (got {name!r}){hint}"


def per_class_metrics(hits: list[int], images: list[int]) -> dict[str, Any]:
    """Each class's top-1 (None where the set has none of its images) and their mean."""
    top1 = [round(100 * h / n, 3) if n else None for h, n in zip(hits, images, strict=True)]
    present = [t for t in top1 if t is not None]
    return {"mean_class_top1": round(sum(present) / len(present), 3), "class_top1": top1}

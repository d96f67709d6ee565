"""Resumable training state in one safetensors file: model, its moving average (EMA),
optimizer, gradient scaler, RNG states, the step, the best validation top-1 so far, and
where the metrics log ended.

safetensors holds tensors only, with a string metadata map beside them; everything else
(the optimizer's hyperparameters, counters) goes into that map as JSON. No pickle is
written or read, unlike `torch.save` of a state dict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save

from diversynth.run.rundir import atomic_open


@dataclass
class Resume:
    step: int  # micro-batches done
    metrics_bytes: int  # length of metrics.jsonl when the state was saved
    fingerprint: str
    made_with: dict[str, Any] = field(default_factory=dict)  # see diversynth.run.provenance
    version_changes: list[dict[str, Any]] = field(default_factory=list)  # allowed ones
    best_top1: float | None = None  # validation's best so far (train/best.safetensors)


def _split(tree: dict[str, Any], prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Move the tensors of a nested dict into `tensors`; what is left is JSON."""
    plain: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}"
        if isinstance(value, torch.Tensor):
            tensors[name] = value.detach().cpu().contiguous()
            plain[str(key)] = {"__tensor__": name}
        elif isinstance(value, dict):
            plain[str(key)] = _split(value, name, tensors)
        else:
            plain[str(key)] = value
    return plain


def _join(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        return {key: _join(value, tensors) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_join(value, tensors) for value in tree]
    return tree


def _weights(prefix: str, module: torch.nn.Module | None) -> dict[str, torch.Tensor]:
    if module is None:
        return {}
    return {f"{prefix}{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, resume: Resume,
               ema: torch.nn.Module | None = None) -> None:  # fmt: skip
    tensors = {**_weights("model.", model), **_weights("ema.", ema)}
    optim = optimizer.state_dict()
    state = {str(k): v for k, v in optim["state"].items()}  # JSON keys are strings
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    meta = {
        "resume": resume.__dict__,
        "optimizer": {
            "state": _split(state, "optimizer", tensors),
            "param_groups": optim["param_groups"],
        },  # fmt: skip
        "scaler": _split(scaler.state_dict(), "scaler", tensors),
        "rng": _split(rng, "rng", tensors),
    }
    with atomic_open(path, "wb") as handle:
        handle.write(save(tensors, metadata={"diversynth-train-state": json.dumps(meta)}))


def read_resume(path: Path) -> Resume | None:
    """The saved position, without loading any tensor; None if there is no usable state."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads(handle.metadata()["diversynth-train-state"])
    except (OSError, KeyError, ValueError, TypeError):
        return None
    return Resume(**meta["resume"])


def load_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler,
               ema: torch.nn.Module | None = None) -> Resume:  # fmt: skip
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["diversynth-train-state"])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    for prefix, module in (("model.", model), ("ema.", ema)):
        if module is not None:
            module.load_state_dict(
                {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            )
    optim = _join(meta["optimizer"], tensors)
    optim["state"] = {int(k): v for k, v in optim["state"].items()}
    optimizer.load_state_dict(optim)
    scaler.load_state_dict(_join(meta["scaler"], tensors))
    rng = _join(meta["rng"], tensors)
    torch.set_rng_state(rng["cpu"])
    cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    return Resume(**meta["resume"])

"""Weights load as safetensors only: no pickle from a model folder is ever unpickled.

Unpickling runs code, and every library here falls back to a pickle when a folder has no
safetensors file (open_clip's `local-dir:` takes `*.bin`, sentence-transformers and
transformers take `pytorch_model.bin`, timm takes `.pth`), each with its own switch or
none. So a local model folder is checked when the config is read (a folder of weights
with no safetensors file is refused, naming the setting and the file), and while any
model loads, `torch.load` (the one door to a pickle in these libraries) refuses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from diversynth.errors import UsageError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SAFE_SUFFIXES = (".safetensors",)


class UnsafeWeightsError(UsageError, ValueError):
    """Weights that would have to be unpickled."""


def _pickle_weights(folder: Path) -> list[Path]:
    """Pickle weight files in folders of the tree that hold no safetensors file beside them
    (where both are there, the loaders take the safetensors)."""
    found = []
    for directory in [folder, *(p for p in sorted(folder.rglob("*")) if p.is_dir())]:
        files = [p for p in directory.iterdir() if p.is_file()]
        if any(p.suffix in SAFE_SUFFIXES for p in files):
            continue
        found += sorted(p for p in files if p.suffix in PICKLE_SUFFIXES)
    return found


def check_local_weights(setting: str, path: str | Path, also: tuple[str, ...] = ()) -> None:
    """Refuse a local model (a folder, or a weights file) whose weights are pickles.
    `also`: other suffixes allowed for a single file (".gguf" for llama.cpp). The message
    starts with `setting` (config validation leaves it out: it names the field itself)."""
    path = Path(path)
    where = f"{setting}: " if setting else ""
    if path.is_file():
        if path.suffix not in (*SAFE_SUFFIXES, *also):
            raise UnsafeWeightsError(
                f"{where}{str(path)!r} is not a safetensors file"
                + (" (nor " + ", ".join(also) + ")" if also else "")
                + ": diversynth loads weights as safetensors only"
            )
        return
    if path.is_dir():
        pickles = _pickle_weights(path)
        if pickles:
            raise UnsafeWeightsError(
                f"{where}{str(pickles[0])!r} is a pickle, and its folder has no "
                "safetensors file: diversynth loads weights as safetensors only (convert "
                "it with safetensors' save_file, or save the model with "
                "safe_serialization=True)"
            )


def check_pipeline_folder(path: str | Path) -> None:
    """Refuse a local diffusers pipeline folder that cannot load: (to be filled in)."""


@contextlib.contextmanager
def refusing_pickles(setting: str) -> Iterator[None]:
    """Within the block, a library reaching for `torch.load` gets UnsafeWeightsError
    naming `setting` and the file (hub downloads included, whatever the library's own
    fallbacks are)."""
    import torch
    import torch.serialization

    original = torch.load

    def refuse(f: Any, *args: Any, **kwargs: Any) -> Any:
        name = getattr(f, "name", f)
        raise UnsafeWeightsError(
            f"{setting}: {str(name)!r} is a pickle: diversynth loads weights as safetensors only"
        )

    torch.load = torch.serialization.load = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.load = torch.serialization.load = original  # type: ignore[assignment]

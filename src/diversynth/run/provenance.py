"""What makes a stage's output besides its config: library versions, the device `auto`
resolved to, the CPU kernels torch runs there, and the revision behind a hub model id.

Work kept across runs (generate's finished shards, train's saved state) records this as
`made_with`; a run that would add to that work with something else stops and says what
changed, unless told `--allow-version-change` (which is recorded as well).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from pathlib import Path
from typing import Any

from diversynth.errors import DiversynthError

# The distributions whose versions change what a stage writes.
STAGE_LIBRARIES = {
    "generate": ("torch", "diffusers", "transformers", "open_clip_torch", "pillow", "numpy"),
    "train": ("torch", "torchvision", "timm", "pillow", "numpy"),
}
# What `diversynth env` lists.
LIBRARIES = ("diversynth", "torch", "torchvision", "diffusers", "transformers", "accelerate",
             "open_clip_torch", "timm", "sentence-transformers", "safetensors",
             "llama-cpp-python", "openai", "ray", "webdataset", "pyarrow", "pillow", "numpy",
             "pydantic")  # fmt: skip
# oneDNN's instruction-set caps, lowest first, and the CPU flag each one needs
_ONEDNN_ISAS = [("SSE41", "sse4_1"), ("AVX", "avx"), ("AVX2", "avx2"),
                ("AVX512_CORE", "avx512f"), ("AVX512_CORE_VNNI", "avx512_vnni"),
                ("AVX512_CORE_BF16", "avx512_bf16"), ("AVX512_CORE_AMX", "amx_tile")]  # fmt: skip


class VersionChangeError(DiversynthError):
    """Kept work was made with other libraries, another device or other model files."""


def version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_field(name: str) -> str:
    """A field of the first CPU in /proc/cpuinfo ("model name", "flags"); "" if none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        if line.partition(":")[0].strip() == name:
            return line.partition(":")[2].strip()
    return ""


def cpu_flags() -> set[str]:
    return set(cpu_field("flags").split())


def onednn_isa(flags: set[str] | None = None) -> str:
    """The instruction set oneDNN's kernels use: the best the CPU has, capped by
    ONEDNN_MAX_CPU_ISA when it is set."""
    flags = cpu_flags() if flags is None else flags
    names = [name for name, _ in _ONEDNN_ISAS]
    best = "unknown"
    for name, flag in _ONEDNN_ISAS:
        if flag in flags:
            best = name
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap in names and best in names and names.index(cap) < names.index(best):
        return cap
    return best


def cpu_kernels() -> dict[str, Any]:
    """Which CPU kernels torch runs: its own (ATen's capability) and oneDNN's. Float
    results on the CPU can differ in the last bits between kernel sets."""
    import torch

    return {
        "aten": torch.backends.cpu.get_cpu_capability(),
        "onednn": onednn_isa(),
        "threads": torch.get_num_threads(),
    }


def device_identity(setting: str, cpu_threads: int | None = None) -> dict[str, Any]:
    """What a `device` setting resolves to here: the GPU's name, or the CPU's kernels."""
    import torch  # here, not at the top: the pipeline reads versions without loading torch

    from diversynth.models.device import pick_device

    device = pick_device(setting)
    if device.type == "cuda":
        return {"device": "cuda", "gpu": torch.cuda.get_device_name(device),
                "cuda": torch.version.cuda}  # fmt: skip
    identity: dict[str, Any] = {"device": device.type}
    if device.type == "cpu":
        identity |= cpu_kernels()
        if cpu_threads is not None:
            identity["threads"] = cpu_threads
    return identity


def hub_revision(ref: str | None) -> str | None:
    """The commit of a hub model id in the local Hugging Face cache (None for a local
    folder, or an id not downloaded yet)."""
    if not ref:
        return None
    ref = ref.removeprefix("hf-hub:")
    if ref.startswith(("/", "local-dir:")) or Path(ref).exists():
        return None
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    head = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=ref, repo_type="model")
    try:
        return (head / "refs" / "main").read_text().strip()
    except OSError:
        return None


def made_with(stage: str, config: Any) -> dict[str, Any]:
    """What a resumable stage's kept work depends on besides its config."""
    libraries = {name: version(name) for name in STAGE_LIBRARIES[stage]}
    if stage == "generate":
        gen = config.generate
        threads = gen.cpu_threads
        if threads is None and gen.engine == "ray":
            threads = int(gen.ray.cpus_per_worker)
        models = {
            "generate.model": hub_revision(gen.model),
            "clip.model": hub_revision(config.clip.model if config.clip else None),
        }
        identity = device_identity(gen.device, threads)
        return {"libraries": libraries, "device": identity,
                "models": {k: v for k, v in models.items() if v is not None}}  # fmt: skip
    return {"libraries": libraries, "device": device_identity(config.train.device)}


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'libraries.diffusers 0.42.1 -> 0.43.0' for each value that differs. A value not
    recorded (older runs, a model not yet downloaded) is not a change."""
    old, new = _flatten(recorded), _flatten(current)
    return [
        f"{key} {old[key]} -> {new.get(key)}"
        for key in sorted(old)
        if old[key] is not None and new.get(key) != old[key]
    ]


def check_kept_work(recorded: dict[str, Any] | None, current: dict[str, Any], what: str,
                    redo: str, allow: bool) -> dict[str, Any] | None:  # fmt: skip
    """Raise VersionChangeError when `what` (work about to be kept) was made with other
    versions than `current`, unless `allow`; then return the change to record with it."""
    if not recorded:
        return None
    changed = changes(recorded, current)
    if not changed:
        return None
    if not allow:
        raise VersionChangeError(
            f"{what} made with {'; '.join(changed)}: rerun with --allow-version-change to "
            f"keep it and go on (recorded in the run), or {redo}"
        )
    return {"at": time.time(), "changes": changed}


def summary() -> dict[str, Any]:
    """Python, the platform and every library `diversynth env` lists."""
    return {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "libraries": {name: version(name) for name in LIBRARIES},
    }

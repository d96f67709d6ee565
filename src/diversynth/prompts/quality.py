"""Prompt quality controls: fits CLIP's context, names its class, no blocked word, no duplicate."""

from __future__ import annotations

import re

import numpy as np

from diversynth.vision.clip_tokens import CLIP_CONTEXT, clip_tokens


def fits_clip(text: str) -> bool:
    return clip_tokens(text) <= CLIP_CONTEXT


def names_class(text: str, name: str) -> bool:
    return name.casefold() in text.casefold()


def first_mention(text: str, phrases: list[str]) -> str | None:
    """The first of the phrases found in the text as whole words, any case, if any."""
    for phrase in phrases:
        if re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, re.I):
            return phrase
    return None


def blocked(text: str, blocklist: list[str]) -> str | None:
    """The first blocklisted word or phrase in the text, if any."""
    return first_mention(text, blocklist)


def mentions_other_class(text: str, other_names: list[str]) -> bool:
    return first_mention(text, other_names) is not None


def near_duplicate_mask(embeddings: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy: keep an item unless its cosine similarity to a kept one is >= threshold."""
    keep = np.zeros(len(embeddings), dtype=bool)
    kept: list[int] = []
    for i in range(len(embeddings)):
        if not kept or float(np.max(embeddings[kept] @ embeddings[i])) < threshold:
            keep[i] = True
            kept.append(i)
    return keep

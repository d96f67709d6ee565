"""Prompt texts from a class name: templates (naive), contexts (CD) and styles (SD)."""

from __future__ import annotations

import random
import re


def with_article(text: str) -> str:
    """'a sketch', 'an origami'; text that already starts with an article is kept."""
    if re.match(r"(?i)^(a|an|the)\s", text):
        return text
    return f"{'an' if text[:1].lower() in 'aeiou' else 'a'} {text}"


def naive_texts(name: str, templates: list[str], count: int, offset: int = 0) -> list[str]:
    """`count` prompts cycling through the templates from `offset`."""
    return [templates[(offset + i) % len(templates)].format(name=name) for i in range(count)]


def clip_imagenet_templates() -> list[str]:
    """CLIP's 80 ImageNet prompt templates (from open_clip), as '{name}' format strings."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [template("{name}") for template in OPENAI_IMAGENET_TEMPLATES]


def context_text(name: str, contexts: list[str]) -> str:
    return ", ".join([f"a photo of {with_article(name)}", *contexts])


def style_text(name: str, style: str) -> str:
    return f"{with_article(style)} of {with_article(name)}"


def sample_context_sets(
    contexts: dict[str, list[str]], per_prompt: int, count: int, rng: random.Random
) -> list[list[str]]:
    """`count` context combinations: `per_prompt` different axes, one phrase from each."""
    axes = [axis for axis, phrases in contexts.items() if phrases]
    if not axes:
        return []
    picks = []
    for _ in range(count):
        chosen = rng.sample(axes, min(per_prompt, len(axes)))
        picks.append([rng.choice(contexts[axis]) for axis in chosen])
    return picks

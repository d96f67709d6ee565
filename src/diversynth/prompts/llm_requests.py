"""What the LLM is asked per class (contexts for CD, styles for SD) and how answers are checked."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from diversynth.llm.base import ChatRequest
from diversynth.llm.json_requests import MAX_PHRASE_CHARS, json_request, phrase_list
from diversynth.prompts.quality import PhraseMatcher, mentions_other_class


def axis_key(axis: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", axis.lower()).strip("_")


# A worked example for another object shows the model the kind of phrase wanted.
EXAMPLE_OBJECT = "bicycle"
EXAMPLE_CONTEXTS = {
    "background_or_place": ["on a busy city street", "on a forest trail"],
    "viewpoint_and_framing": ["seen from above", "close-up of the front"],
    "lighting": ["soft morning light", "harsh midday sun"],
    "weather_and_time_of_day": ["on a rainy evening", "at sunset"],
    "objects_that_appear_with_it": ["next to a lamp post", "with a helmet on it"],
    "what_it_is_doing_or_its_state": ["leaning against a wall", "covered in mud"],
}
EXAMPLE_STYLES = ["pencil sketch", "oil painting", "origami", "plush toy", "tattoo"]


def context_request(
    name: str, description: str | None, axes: list[str], per_axis: int, seed: int, max_tokens: int
) -> ChatRequest:
    keys = {axis_key(a): a for a in axes}
    example = {k: EXAMPLE_CONTEXTS.get(k, ["a short phrase", "another phrase"]) for k in keys}
    about = f" ({description})" if description else ""
    user = (
        "Write short phrases (2 to 6 words) that describe the setting of a photo, for these "
        "aspects: " + "; ".join(f"{k}: {a}" for k, a in keys.items()) + ".\n"
        f"Example for a {EXAMPLE_OBJECT}: {json.dumps(example)}\n"
        f"Now write {per_axis} different phrases per aspect for a photo of a {name}{about}. "
        f"Do not use the word {name!r}. Answer with the JSON object only."
    )
    return json_request(name, user, {k: phrase_list(per_axis) for k in keys}, seed, max_tokens)


def style_request(name: str, count: int, seed: int, max_tokens: int) -> ChatRequest:
    user = (
        f"Name artistic styles or renditions in which an object can be depicted. "
        f"Example for a {EXAMPLE_OBJECT}: {json.dumps({'styles': EXAMPLE_STYLES})}\n"
        f"Now name {count} different styles that suit a {name}. Short phrases, without the "
        f"word {name!r}. Answer with the JSON object only."
    )
    return json_request(name, user, {"styles": phrase_list(count)}, seed, max_tokens)


def clean_phrases(items: Any, name: str, class_names: PhraseMatcher) -> list[str]:
    """Usable phrases: text, one line, short, not the class name alone, no other class named."""
    if not isinstance(items, list):
        return []
    phrases = []
    for item in items:
        if not isinstance(item, str):
            continue
        text = " ".join(item.split()).strip(" .,;:")
        if not re.search(r"[^\W\d_]{2}", text) or len(text) > MAX_PHRASE_CHARS:
            continue  # no word in it ("...", "1."), or a sentence rather than a phrase
        if text.casefold() == name.casefold():
            continue
        if mentions_other_class(text, class_names, name) or text.casefold() in (
            p.casefold() for p in phrases
        ):
            continue
        phrases.append(text)
    return phrases


def context_validator(
    name: str, axes: list[str], class_names: PhraseMatcher
) -> Callable[[Any], dict[str, list[str]]]:
    keys = [axis_key(a) for a in axes]

    def validate(answer: Any) -> dict[str, list[str]]:
        if not isinstance(answer, dict):
            raise ValueError(f"expected a JSON object, got {type(answer).__name__}")
        contexts = {k: clean_phrases(answer.get(k), name, class_names) for k in keys}
        if not any(contexts.values()):
            raise ValueError(f"no usable context phrases (keys wanted: {keys})")
        return contexts

    return validate


def style_validator(name: str, class_names: PhraseMatcher) -> Callable[[Any], list[str]]:
    def validate(answer: Any) -> list[str]:
        if not isinstance(answer, dict):
            raise ValueError(f"expected a JSON object, got {type(answer).__name__}")
        styles = clean_phrases(answer.get("styles"), name, class_names)
        if not styles:
            raise ValueError("no usable styles")
        return styles

    return validate

"""What the LLM is asked per class (contexts for CD, styles for SD) and how answers are checked."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from diversynth.llm.base import ChatRequest
from diversynth.llm.json_requests import (
    MAX_LIST_ITEMS,
    MAX_PHRASE_CHARS,
    json_request,
    phrase_list,
)
from diversynth.stages.prompts.compose import with_article
from diversynth.stages.prompts.examples import WorkedExample, axis_key
from diversynth.stages.prompts.quality import PhraseMatcher, mentions_other_class


def context_request(
    name: str,
    description: str | None,
    axes: list[str],
    per_axis: int,
    seed: int,
    max_tokens: int,
    example: WorkedExample | None,
) -> ChatRequest:
    """Context phrases per axis for a class, with `example`'s as a worked example (none
    when it is None)."""
    keys = {axis_key(a): a for a in axes}
    about = f" ({description})" if description else ""
    shown = (
        f"Example for {with_article(example.object)}: "
        f"{json.dumps(example.context_example(list(keys)))}\n"
        if example
        else ""
    )
    user = (
        "Write short phrases (2 to 6 words) that describe the setting of a photo, for these "
        "aspects: " + "; ".join(f"{k}: {a}" for k, a in keys.items()) + ".\n" + shown +
        f"Now write {per_axis} different phrases per aspect for a photo of a {name}{about}. "
        "The phrases must suit this object" + (", not the example's" if example else "") +
        f". Do not use the word {name!r}. Answer with the JSON object only."
    )  # fmt: skip
    return json_request(name, user, {k: phrase_list(per_axis) for k in keys}, seed, max_tokens)


def style_request(
    name: str, count: int, seed: int, max_tokens: int, example: WorkedExample | None
) -> ChatRequest:
    shown = (
        f"Example for {with_article(example.object)}: {json.dumps({'styles': example.styles})}\n"
        if example
        else ""
    )
    user = (
        "Name artistic styles or renditions in which an object can be depicted.\n" + shown +
        f"Now name {count} different styles that suit a {name}. Short phrases, without the "
        f"word {name!r}. Answer with the JSON object only."
    )  # fmt: skip
    return json_request(name, user, {"styles": phrase_list(count)}, seed, max_tokens)


def clean_phrases(items: Any, name: str, class_names: PhraseMatcher) -> list[str]:
    """Usable phrases among the first MAX_LIST_ITEMS items: text, one line, short, not the
    class name alone, no other class named, each once (any case)."""
    if not isinstance(items, list):
        return []
    phrases = []
    # the class name alone is no phrase; a set, since a scan of the phrases kept was quadratic
    seen = {name.casefold()}
    for item in items[:MAX_LIST_ITEMS]:
        if not isinstance(item, str):
            continue
        text = " ".join(item.split()).strip(" .,;:")
        if len(text) > MAX_PHRASE_CHARS or not re.search(r"[^\W\d_]{2}", text):
            continue  # a sentence rather than a phrase, or no word in it ("...", "1.")
        key = text.casefold()
        if key in seen or mentions_other_class(text, class_names, name):
            continue
        seen.add(key)
        phrases.append(text)
    return phrases


# What leaves a validator's cleaned phrases: those that copy the request's worked example
# (examples.CopyCheck.keep, bound to the example), counted where it is kept.
DropCopies = Callable[[list[str]], list[str]]


def _no_copies(phrases: list[str]) -> list[str]:
    return phrases


def context_validator(
    name: str, axes: list[str], class_names: PhraseMatcher, drop_copies: DropCopies = _no_copies
) -> Callable[[Any], dict[str, list[str]]]:
    keys = [axis_key(a) for a in axes]

    def validate(answer: Any) -> dict[str, list[str]]:
        if not isinstance(answer, dict):
            raise ValueError(f"expected a JSON object, got {type(answer).__name__}")
        cleaned = {k: clean_phrases(answer.get(k), name, class_names) for k in keys}
        if not any(cleaned.values()):
            raise ValueError(f"no usable context phrases (keys wanted: {keys})")
        # all copies is a valid, empty answer: asking again with the example shown would
        # copy again; the stage asks without it
        return {k: drop_copies(phrases) for k, phrases in cleaned.items()}

    return validate


def style_validator(
    name: str, class_names: PhraseMatcher, drop_copies: DropCopies = _no_copies
) -> Callable[[Any], list[str]]:
    def validate(answer: Any) -> list[str]:
        if not isinstance(answer, dict):
            raise ValueError(f"expected a JSON object, got {type(answer).__name__}")
        cleaned = clean_phrases(answer.get("styles"), name, class_names)
        if not cleaned:
            raise ValueError("no usable styles")
        return drop_copies(cleaned)  # all copies: empty, asked again without the example

    return validate

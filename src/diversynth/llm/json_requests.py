"""Requests whose answer must be one JSON object of given properties (lists of short
phrases): how the stages ask an LLM for names, contexts and styles."""

from __future__ import annotations

from typing import Any

from diversynth.llm.base import ChatRequest

SYSTEM = "You help build a diverse image dataset. You answer with one JSON object and nothing else."
MAX_PHRASE_CHARS = 80
# The most items of one list in an answer that are looked at. The stages ask for at most 256
# (prompts.styles_per_class; contexts_per_axis and classes' llm_names at most 64), so 4x
# that leaves room for an answer that repeats or pads itself, while one of 250k phrases
# (a 10 MB answer) costs no more than this.
MAX_LIST_ITEMS = 1024


def phrase_list(max_items: int, max_chars: int = MAX_PHRASE_CHARS) -> dict[str, Any]:
    return {
        "type": "array",
        "items": {"type": "string", "maxLength": max_chars},
        "minItems": 1,
        "maxItems": max_items,
    }


def json_request(
    name: str, user: str, properties: dict[str, Any], seed: int, max_tokens: int
) -> ChatRequest:
    """A request whose answer must be an object with exactly these (required) properties."""
    schema = {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
    return ChatRequest(
        messages=(("system", SYSTEM), ("user", user)),
        max_tokens=max_tokens,
        seed=seed,
        json_schema=schema,
        label=name,
    )

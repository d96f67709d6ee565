"""How many tokens CLIP's text encoder reads a text as (its BPE, from open_clip)."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from open_clip.tokenizer import SimpleTokenizer

CLIP_CONTEXT = 77  # tokens, start and end markers included


@lru_cache(maxsize=1)
def _clip_tokenizer() -> SimpleTokenizer:
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def clip_tokens(text: str) -> int:
    return len(_clip_tokenizer().encode(text)) + 2


class ClipContext:
    """The prompt limit without a text-to-image pipeline to ask: CLIP's 77 tokens."""

    tokens = CLIP_CONTEXT

    def describe(self) -> str:
        return f"{CLIP_CONTEXT} CLIP tokens"

    def count(self, text: str) -> int:
        return clip_tokens(text)

    def fits(self, text: str) -> bool:
        return clip_tokens(text) <= CLIP_CONTEXT

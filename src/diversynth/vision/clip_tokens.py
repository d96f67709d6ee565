"""How many tokens CLIP's text encoder reads a text as (its BPE, from open_clip)."""

from __future__ import annotations

from functools import lru_cache

CLIP_CONTEXT = 77  # tokens, start and end markers included


@lru_cache(maxsize=1)
def _clip_tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def clip_tokens(text: str) -> int:
    return len(_clip_tokenizer().encode(text)) + 2

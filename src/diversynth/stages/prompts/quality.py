"""Prompt quality controls: fits the text encoders, names its class, no blocked word, no
duplicate."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from functools import lru_cache
from typing import Protocol

import numpy as np


class TokenLimit(Protocol):
    """How long a prompt may be (vision.clip_tokens.ClipContext, or the limit of the
    configured pipeline's text encoders: vision.pipeline_traits.PromptLimit)."""

    def describe(self) -> str: ...
    def count(self, text: str) -> int: ...
    def fits(self, text: str) -> bool: ...


def names_class(text: str, name: str) -> bool:
    return name.casefold() in text.casefold()


class PhraseMatcher:
    """Which of many phrases a text holds as whole words, any case. Phrases are indexed by
    their first word, and only those whose first word is in the text are searched for, so
    checking a phrase against every class name costs its own words, not one search per
    class (1000 classes: one regex search per name and phrase, recompiled past Python's
    regex cache, took the prompts stage past 20 minutes)."""

    def __init__(self, phrases: Iterable[str]) -> None:
        self.phrases = list(dict.fromkeys(phrases))  # in order, once each
        self._rank = {phrase: i for i, phrase in enumerate(self.phrases)}
        self._patterns: dict[str, re.Pattern[str]] = {}
        self._by_first_word: dict[str, list[str]] = defaultdict(list)
        self._always: list[str] = []  # phrases that do not start with a word character
        for phrase in self.phrases:
            first = re.match(r"\w+", phrase)
            if first:
                self._by_first_word[first.group().lower()].append(phrase)
            else:
                self._always.append(phrase)

    def first(self, text: str, exclude: frozenset[str] = frozenset()) -> str | None:
        """The first of the phrases (in their order) found in the text, leaving out those
        whose casefold is in `exclude`."""
        words = {word.lower() for word in re.findall(r"\w+", text)}
        candidates = {p for w in words for p in self._by_first_word.get(w, ())}
        for phrase in sorted(candidates | set(self._always), key=self._rank.__getitem__):
            if phrase.casefold() in exclude:
                continue
            if phrase not in self._patterns:
                self._patterns[phrase] = re.compile(rf"(?<!\w){re.escape(phrase)}(?!\w)", re.I)
            if self._patterns[phrase].search(text):
                return phrase
        return None


@lru_cache(maxsize=8)
def _matcher(phrases: tuple[str, ...]) -> PhraseMatcher:
    return PhraseMatcher(phrases)


def first_mention(text: str, phrases: list[str]) -> str | None:
    """The first of the phrases found in the text as whole words, any case, if any."""
    return _matcher(tuple(phrases)).first(text)


def blocked(text: str, blocklist: list[str]) -> str | None:
    """The first blocklisted word or phrase in the text, if any."""
    return first_mention(text, blocklist)


def mentions_other_class(text: str, class_names: PhraseMatcher, own_name: str) -> bool:
    """Whether the text names a class other than `own_name` (as whole words)."""
    return class_names.first(text, exclude=frozenset({own_name.casefold()})) is not None


def near_duplicate_mask(embeddings: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy: keep an item unless its cosine similarity to a kept one is >= threshold."""
    keep = np.zeros(len(embeddings), dtype=bool)
    kept: list[int] = []
    for i in range(len(embeddings)):
        if not kept or float(np.max(embeddings[kept] @ embeddings[i])) < threshold:
            keep[i] = True
            kept.append(i)
    return keep

"""Candidate names per class, the checks every name passes, and which names each class claims.

A candidate is a name a class could be prompted with: its lemmas, its first lemma with its
WordNet hypernym ("crane (wading bird)"), a curated name ("construction crane"), the name
with its description, or an LLM proposal. Every candidate is one printable line, short
enough to leave room for context in CLIP's 77 tokens.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from diversynth.data.classes.entry import ClassEntry
from diversynth.models.clip_tokens import clip_tokens

MAX_NAME_TOKENS = 32  # of CLIP's 77: the rest is for templates, contexts and styles
MAX_NAME_CHARS = 100
MAX_LEMMAS = 3
MAX_DESCRIPTION_WORDS = 8  # "apple (the fruit)" yes; a paragraph no

# Source of a candidate; the text rule's prior prefers them in this order (see select.py).
SOURCES = ("curated", "llm", "raw", "lemma", "hypernym", "description", "fallback")


@dataclass
class Candidate:
    text: str
    source: str
    score: float | None = None
    detail: dict[str, float | int] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.text.casefold()

    def as_record(self) -> dict[str, object]:
        score = None if self.score is None else round(self.score, 4)
        return {"text": self.text, "score": score, "source": self.source, **self.detail}


def clean_name(text: object, strip: str = "") -> str | None:
    """The name as one normalised line (`strip` characters off its ends), or None if it
    cannot be a name."""
    if not isinstance(text, str):
        return None
    name = unicodedata.normalize("NFC", " ".join(text.split())).strip(strip + " ")
    if not name or len(name) > MAX_NAME_CHARS:
        return None
    if any(unicodedata.category(ch)[0] == "C" for ch in name):
        return None  # control or unassigned characters
    if clip_tokens(name) > MAX_NAME_TOKENS:
        return None
    return name


def claimed_names(entry: ClassEntry) -> set[str]:
    """Names that point at this class: another class proposing one of them is confused."""
    names = {entry.raw_name, *entry.lemmas}
    if entry.curated:
        names.add(entry.curated)
    return {n.casefold() for n in names}


def own_words(entry: ClassEntry) -> set[str]:
    """The words of a class's own names and nearest hypernyms ("crane", "wading", "bird")."""
    texts = [entry.raw_name, *entry.lemmas, *entry.hypernyms[:2], entry.curated or ""]
    return {w for t in texts for w in re.findall(r"[^\W_]{3,}", t.casefold())}


def base_candidates(entry: ClassEntry, curated: bool) -> list[Candidate]:
    """Every candidate that needs no model: from the class list, WordNet and curated data."""
    found: list[Candidate] = []

    def add(text: str | None, source: str) -> None:
        name = clean_name(text)
        if name and name.casefold() not in {c.key for c in found}:
            found.append(Candidate(name, source))

    if curated and entry.curated:
        add(entry.curated, "curated")
    add(entry.raw_name, "lemma" if entry.raw_name in entry.lemmas else "raw")
    for lemma in entry.lemmas[:MAX_LEMMAS]:
        add(lemma, "lemma")
    if entry.hypernyms:
        add(f"{entry.raw_name} ({entry.hypernyms[0]})", "hypernym")
    description = entry.description
    if not entry.wnid and description and len(description.split()) <= MAX_DESCRIPTION_WORDS:
        add(f"{entry.raw_name} ({description})", "description")
    if not found:  # the raw name itself failed the checks (too long for CLIP)
        found.append(Candidate(_shorten(entry.raw_name), "raw"))
    return found


def _shorten(name: str) -> str:
    words = name.split()
    while len(words) > 1 and clip_tokens(" ".join(words)) > MAX_NAME_TOKENS:
        words.pop()
    text = " ".join(words)
    while clip_tokens(text) > MAX_NAME_TOKENS or len(text) > MAX_NAME_CHARS:
        text = text[: max(1, min(len(text) - 1, MAX_NAME_CHARS))]
    return text

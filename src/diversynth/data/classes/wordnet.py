"""WordNet 3.0 noun data, read in place from Debian's `wordnet-base` files.

A wnid is `n` + the synset's byte offset in `data.noun`, so a synset is one seek away.
NLTK's WordNet reader needs its own corpus download; these two plain files are all the
disambiguation needs (lemmas, gloss, hypernyms, and how many senses a word has).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from diversynth.errors import DiversynthError

WORDNET_DIR = Path(os.environ.get("DIVERSYNTH_WORDNET", "/usr/share/wordnet"))
WNID = re.compile(r"^n\d{8}$")


class WordNetError(DiversynthError):
    pass


@dataclass(frozen=True)
class Synset:
    wnid: str
    lemmas: tuple[str, ...]
    gloss: str
    hypernyms: tuple[str, ...]  # wnids of direct hypernyms (class and instance)


def _file(name: str) -> Path:
    path = WORDNET_DIR / name
    if not path.is_file():
        raise WordNetError(
            f"WordNet data not found at {path} (Debian package wordnet-base; "
            "scripts/setup.sh installs it, or set DIVERSYNTH_WORDNET)"
        )
    return path


def _word(raw: str) -> str:
    return re.sub(r"\([a-z]+\)$", "", raw).replace("_", " ")


def _parse(line: str) -> Synset:
    head, _, gloss = line.partition(" | ")
    fields = head.split()
    count = int(fields[3], 16)
    lemmas = tuple(_word(fields[4 + 2 * i]) for i in range(count))
    pos = 4 + 2 * count
    pointers = int(fields[pos])
    hypernyms = []
    for i in range(pointers):
        symbol, offset, kind = fields[pos + 1 + 4 * i : pos + 4 + 4 * i]
        if symbol in ("@", "@i") and kind == "n":
            hypernyms.append("n" + offset)
    return Synset("n" + fields[0], lemmas, gloss.strip(), tuple(hypernyms))


class WordNet:
    """Noun synsets by wnid, and sense counts by lemma."""

    def __init__(self) -> None:
        self._data = _file("data.noun").open("rb")
        self._cache: dict[str, Synset | None] = {}

    def synset(self, wnid: str) -> Synset | None:
        if wnid not in self._cache:
            self._cache[wnid] = self._read(wnid)
        return self._cache[wnid]

    def _read(self, wnid: str) -> Synset | None:
        if not WNID.match(wnid):
            return None
        offset = int(wnid[1:])
        self._data.seek(offset)
        if offset and (self._data.seek(offset - 1), self._data.read(1))[1] != b"\n":
            return None  # not the start of a record
        line = self._data.readline().decode("utf-8")
        if not line.startswith(wnid[1:] + " "):
            return None
        return _parse(line)

    def hypernym_chain(self, wnid: str, limit: int = 12) -> list[str]:
        """First lemmas of the hypernyms, nearest first, up to the root."""
        chain: list[str] = []
        synset = self.synset(wnid)
        while synset and synset.hypernyms and len(chain) < limit:
            synset = self.synset(synset.hypernyms[0])
            if synset:
                chain.append(synset.lemmas[0])
        return chain

    def senses(self, text: str) -> int:
        """How many noun senses WordNet knows for this exact text (0 if none)."""
        return _sense_counts().get(text.casefold().replace(" ", "_"), 0)


@lru_cache(maxsize=1)
def _sense_counts() -> dict[str, int]:
    counts = {}
    with _file("index.noun").open(encoding="utf-8") as handle:
        for line in handle:
            if line.startswith(" "):
                continue  # the licence header
            fields = line.split(" ", 3)
            counts[fields[0]] = int(fields[2])
    return counts


@lru_cache(maxsize=1)
def wordnet() -> WordNet:
    return WordNet()

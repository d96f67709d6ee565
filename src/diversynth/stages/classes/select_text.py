"""The text-only rule, and the step that makes every chosen name distinct.

Text rule (used without exemplar images, and as the start and tie-break of the CLIP
search), for candidate t of class c:

    ambiguity(t) = max(1, WordNet noun senses of t) + other classes that claim t
    score(t)     = 1 / ambiguity(t) + prior(source) - 0.06 * (words beyond 4)

A class claims its raw name, its lemmas and its curated name. "lemma (hypernym)" and
"name (description)" forms are not WordNet entries, so only a clash with another class
makes them ambiguous. Priors: curated 0.3, the raw name or first lemma 0.1, other lemmas
0.05, qualified forms and LLM names 0 (an LLM name shares none of the class's own words,
lemma or hypernym: -0.5). So an unambiguous plain name ("tench": 1.1) beats its qualified
form (1.0), and an ambiguous one ("crane": 5 senses and a second class, 0.27) loses to it.
Without images to check them, LLM names win only over ambiguous names that have no
curated or WordNet-qualified alternative (custom class lists); with exemplars, CLIP decides.
"""

from __future__ import annotations

import re
from collections import defaultdict

from diversynth.data.classes.entry import ClassEntry
from diversynth.data.classes.wordnet import wordnet
from diversynth.stages.classes.candidates import Candidate, own_words

PRIOR = {"curated": 0.3, "llm": 0.0, "raw": 0.1, "lemma": 0.05, "hypernym": 0.0,
         "description": 0.0, "fallback": -1.0}  # fmt: skip
UNANCHORED = -0.5  # an LLM name sharing no word with the class's names or hypernyms
QUALIFIED = ("hypernym", "description", "fallback")


def claim_index(claims: list[set[str]]) -> dict[str, set[int]]:
    """name (casefolded) -> the classes that claim it."""
    index: dict[str, set[int]] = defaultdict(set)
    for position, names in enumerate(claims):
        for name in names:
            index[name].add(position)
    return index


def score_text(
    position: int, entry: ClassEntry, candidate: Candidate, claimed_by: dict[str, set[int]]
) -> None:
    """Set the candidate's text-rule score and the facts behind it."""
    senses = 0 if candidate.source in QUALIFIED else wordnet().senses(candidate.text)
    shared = len(claimed_by.get(candidate.key, set()) - {position})
    prior = PRIOR[candidate.source]
    if candidate.source == "lemma" and entry.lemmas and candidate.text == entry.lemmas[0]:
        prior = PRIOR["raw"]
    detail: dict[str, float | int] = {"senses": senses, "shared": shared}
    if candidate.source == "llm":
        words = set(re.findall(r"[^\W_]{3,}", candidate.text.casefold()))
        detail["anchored"] = int(bool(words & own_words(entry)))
        prior += 0 if detail["anchored"] else UNANCHORED
    long_by = max(0, len(candidate.text.split()) - 4)
    candidate.score = 1 / (max(1, senses) + shared) + prior - 0.06 * long_by
    candidate.detail = detail


def explain_text(candidate: Candidate) -> str:
    senses, shared = candidate.detail.get("senses", 0), candidate.detail.get("shared", 0)
    facts = [f"{candidate.source}"]
    if senses:
        facts.append(f"{senses} WordNet sense{'s' if senses != 1 else ''}")
    if candidate.detail.get("anchored") == 0:
        facts.append("shares no word with the class's names")
    facts.append(f"{shared} other class{'es use' if shared != 1 else ' uses'} it" if shared
                 else "no other class uses it")  # fmt: skip
    return f"{candidate.score:.2f} ({', '.join(facts)})"


def assign_distinct(candidates: list[list[Candidate]], key: str = "score") -> list[int]:
    """One candidate per class, names pairwise distinct (case-insensitive).

    Greedy over all (score, class, candidate) from the best down: a class takes its best
    candidate that no class has taken yet. A class left without one (every candidate
    taken: duplicate names and nothing else to tell them apart) gets its first candidate
    numbered, "apple (2)", as a last resort.
    """
    order = sorted(
        ((c.score or 0.0, -pos, -i) for pos, cands in enumerate(candidates)
         for i, c in enumerate(cands)),
        reverse=True,
    )  # fmt: skip
    choice: dict[int, int] = {}
    taken: set[str] = set()
    for _, neg_pos, neg_i in order:
        pos, i = -neg_pos, -neg_i
        if pos in choice or candidates[pos][i].key in taken:
            continue
        choice[pos] = i
        taken.add(candidates[pos][i].key)
    for pos, cands in enumerate(candidates):
        if pos in choice:
            continue
        n = 2
        while f"{cands[0].text} ({n})".casefold() in taken:
            n += 1
        cands.append(Candidate(f"{cands[0].text} ({n})", "fallback", PRIOR["fallback"]))
        choice[pos] = len(cands) - 1
        taken.add(cands[-1].key)
    return [choice[pos] for pos in range(len(candidates))]

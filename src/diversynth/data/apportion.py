"""Whole numbers in proportion: prompts per strategy, synthetic images per class and per
prompt, a class-balanced epoch's images per class."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction


def largest_remainder(total: int, weights: Sequence[float]) -> list[int]:
    """`total` split in proportion to `weights`, whole numbers summing to it: the floors,
    then one more to the largest remainders, earlier first on a tie. Exact (fractions):
    the same split whatever the order of the weights or the machine; all-zero weights
    give all zeros."""
    exact_weights = [Fraction(w) for w in weights]
    weight_sum = sum(exact_weights)
    if not weight_sum:
        return [0] * len(exact_weights)
    exact = [total * w / weight_sum for w in exact_weights]
    counts = [int(x) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts

"""Which images go into each training batch: a pure function of (seed, step).

Every micro-batch holds `real` real images and then `synthetic` synthetic ones. Real images
follow a fresh permutation per epoch (an epoch is one pass's worth of the real set);
synthetic images follow an endless sequence of permutations of the synthetic set. With a
class-aware order (`train.sampler` balanced or sqrt), each epoch or cycle instead holds
a set number of images of each class, drawn from that class's own endless sequence of
permutations, then shuffled. Each image comes with its own augmentation seed. Because
nothing depends on what ran before, a resumed run starts at any step and sees exactly the
batches and augmentations of an uninterrupted one, and with N processes each takes its
slice of the same global batch.

torch's samplers keep their position in iterator state that a checkpoint cannot hold, and
DistributedSampler cannot mix two datasets in fixed proportions; hence this small class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Sampler

from diversynth.data.apportion import largest_remainder
from diversynth.run.seeding import derive_seed

# A sample is (index into real + synthetic, augmentation seed).
Sample = tuple[int, int]
# train.sampler: each class's share of an epoch, from its number of images (math.sqrt is
# correctly rounded, as pow need not be: the same quotas on every machine)
CLASS_WEIGHT: dict[str, Callable[[int], float]] = {
    "sqrt": math.sqrt,
    "balanced": lambda n: 1.0 if n else 0.0,
}


def _generator(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*key) % (1 << 63))


@dataclass
class ClassAware:
    """An order of a set's images in which each class gets a quota per cycle: as many
    images as the set has, split over the classes by `weight` of their counts. A class's
    images come from its own endless sequence of permutations, so a class smaller than
    its quota repeats its images evenly, and the whole cycle is then shuffled. Integer
    draws only (torch.randperm): the same order on every CPU."""

    labels: torch.Tensor  # class of each image of the set
    weight: Callable[[int], float]  # of a class, from its number of images

    def __post_init__(self) -> None:
        counts = torch.bincount(self.labels).tolist()
        self.members = list(torch.argsort(self.labels, stable=True).split(counts))
        self.quotas = largest_remainder(len(self.labels), [self.weight(n) for n in counts])

    def order(self, seed: int, cycle: int) -> torch.Tensor:
        picks = []
        for label, (members, quota) in enumerate(zip(self.members, self.quotas, strict=True)):
            size = len(members)
            if not quota:
                continue
            for round_ in range(cycle * quota // size, -(-(cycle + 1) * quota // size)):
                perm = members[torch.randperm(size, generator=_generator(seed, label, round_))]
                low = max(cycle * quota - round_ * size, 0)
                high = min((cycle + 1) * quota - round_ * size, size)
                picks.append(perm[low:high])
        together = torch.cat(picks)
        return together[torch.randperm(len(together), generator=_generator(seed, -1, cycle))]


Orders = tuple["ClassAware | None", "ClassAware | None"]  # of the real and synthetic parts


def class_aware_orders(sampler: str, applies_to: str, real_labels: np.ndarray,
                       synthetic_labels: np.ndarray | None) -> Orders:  # fmt: skip
    """`train.sampler`'s orders for the real and the synthetic part (`train.sampler_on`);
    None where images go in plain permutations."""
    weight = CLASS_WEIGHT.get(sampler)
    if weight is None:  # instance: plain permutations
        return None, None
    real = None
    if len(real_labels) and applies_to != "synthetic":
        real = ClassAware(torch.from_numpy(real_labels), weight)
    synthetic = None
    if synthetic_labels is not None and len(synthetic_labels) and applies_to != "real":
        synthetic = ClassAware(torch.from_numpy(synthetic_labels), weight)
    return real, synthetic


@dataclass
class MixedBatches(Sampler[list[Sample]]):
    num_real: int
    num_synthetic: int
    real: int  # real images per micro-batch, all processes together
    synthetic: int  # synthetic images per micro-batch, all processes together
    seed: int
    epochs: int
    group: int = 1  # micro-batches per optimizer step: an epoch holds whole groups
    start: int = 0  # first micro-batch to yield (resume)
    rank: int = 0
    world: int = 1
    # class-aware orders of the real and synthetic sets (None: plain permutations)
    real_order: ClassAware | None = None
    synthetic_order: ClassAware | None = None
    _perms: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.num_real < 1:
            raise ValueError("train: the real training set is empty")
        if self.synthetic and self.num_synthetic < 1:
            raise ValueError("train: synthetic images are asked for but the run has none")

    @property
    def per_epoch(self) -> int:
        """Micro-batches per epoch: whole optimizer steps only, unless the set is smaller
        than one step."""
        return max(1, self.num_real // (self.real * self.group)) * self.group

    def __len__(self) -> int:
        return self.per_epoch * self.epochs - self.start

    def __iter__(self) -> Iterator[list[Sample]]:
        for step in range(self.start, self.per_epoch * self.epochs):
            yield self.batch(step)

    def _perm(self, kind: str, n: int, cycle: int) -> torch.Tensor:
        key = (kind, cycle)
        if key not in self._perms:
            self._perms = {k: v for k, v in self._perms.items() if k[0] != kind}  # keep one
            offset = 0 if kind == "real" else 1 << 20
            aware = self.real_order if kind == "real" else self.synthetic_order
            if aware is not None:
                self._perms[key] = aware.order(self.seed * (1 << 21) + offset, cycle)
            else:
                generator = torch.Generator().manual_seed(self.seed * (1 << 21) + offset + cycle)
                self._perms[key] = torch.randperm(n, generator=generator)
        return self._perms[key]

    def batch(self, step: int) -> list[Sample]:
        """This process's share of global micro-batch `step`: real samples first."""
        epoch, i = divmod(step, self.per_epoch)
        real = self._perm("real", self.num_real, epoch)[i * self.real : (i + 1) * self.real]
        # a seed per image from its place in the real or synthetic sequence, so that any
        # split into micro-batches or processes gives every image the same augmentation
        base = self.seed * 0x9E3779B97F4A7C15
        first = epoch * self.num_real + i * self.real
        samples = [(int(index), (base + 2 * (first + k)) % (1 << 62))
                   for k, index in enumerate(real.tolist())]  # fmt: skip
        n_real = len(samples)
        first = step * self.synthetic
        for position in range(first, first + self.synthetic):
            cycle, j = divmod(position, self.num_synthetic)
            index = int(self._perm("synthetic", self.num_synthetic, cycle)[j])
            samples.append((self.num_real + index, (base + 2 * position + 1) % (1 << 62)))
        return samples[:n_real][self.rank :: self.world] + samples[n_real:][self.rank :: self.world]

"""Which images go into each training batch: a pure function of (seed, step).

Every micro-batch holds `real` real images and then `synthetic` synthetic ones. Real images
follow a fresh permutation per epoch (an epoch is one pass over the real set); synthetic
images follow an endless sequence of permutations of the synthetic set. Each image comes
with its own augmentation seed. Because nothing depends on what ran before, a resumed run
starts at any step and sees exactly the batches and augmentations of an uninterrupted one,
and with N processes each takes its slice of the same global batch.

torch's samplers keep their position in iterator state that a checkpoint cannot hold, and
DistributedSampler cannot mix two datasets in fixed proportions; hence this small class.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch.utils.data import Sampler

# A sample is (index into real + synthetic, augmentation seed).
Sample = tuple[int, int]


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

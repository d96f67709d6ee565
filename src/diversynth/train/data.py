"""What training feeds the model: image transforms, and real and synthetic images behind one
index, each with its own augmentation seed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2


def image_transform(size: int, train: bool) -> Callable[[Image.Image], torch.Tensor]:
    """RGB tensor at `size` px, normalised; grey images become three equal channels."""
    steps: list[Any] = [v2.RGB(), v2.Resize((size, size), antialias=True)]
    if train:
        steps.append(v2.RandomHorizontalFlip())
    steps += [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([0.5] * 3, [0.5] * 3),
    ]
    return v2.Compose(steps)


class SeededSamples(Dataset):
    """Real and synthetic images behind one index (real first), each drawn with its own
    augmentation seed, so an image's crop and flip do not depend on which worker or which
    run (first or resumed) loads it."""

    def __init__(self, real: Dataset, synthetic: Dataset | None):
        self.real, self.synthetic = real, synthetic
        self.num_real = len(real)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.num_real + (len(self.synthetic) if self.synthetic else 0)  # type: ignore[arg-type]

    def __getitem__(self, sample: tuple[int, int]) -> tuple[torch.Tensor, int, bool]:
        """(image, class index, whether it is synthetic)."""
        index, seed = sample
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if index < self.num_real:
                return (*self.real[index], False)
            assert self.synthetic is not None
            return (*self.synthetic[index - self.num_real], True)

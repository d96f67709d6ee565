"""What training feeds the model: image transforms (timm's, from `train.augment` and the
model's own normalisation), and real and synthetic images behind one index, each with its
own augmentation seed."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, cast

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision.transforms import v2

from diversynth.config import TrainConfig


def model_preprocessing(cfg: TrainConfig) -> dict[str, Any]:
    """How images reach the model, recorded in its checkpoint: size, the model's own mean
    and std (timm's pretrained_cfg; ImageNet's when the model has none), and evaluation's
    interpolation and centre-crop fraction."""
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    pretrained = get_pretrained_cfg(cfg.model)
    known = resolve_data_config(pretrained_cfg=pretrained.to_dict() if pretrained else {})
    aug = cfg.augment
    zoomed = aug.scale != (1.0, 1.0) or aug.ratio != (1.0, 1.0)
    crop_pct = aug.crop_pct or (known["crop_pct"] if zoomed else 1.0)
    return {
        "image_size": cfg.image_size,
        "mean": list(known["mean"]),
        "std": list(known["std"]),
        "interpolation": "bicubic" if aug.interpolation == "random" else aug.interpolation,
        "crop_pct": crop_pct,
    }


def _posterize(image: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize, where keeping 0 bits gives a black image as Pillow's own did
    before it began to refuse 0 (Pillow 13 here): RandAugment's increasing variant (inc1)
    and TrivialAugment reach 0 at high magnitudes and would stop training."""
    if bits_to_keep >= 8:
        return image
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    return ImageOps.posterize(image, bits_to_keep)


def _patch_timm_posterize() -> None:
    from timm.data import auto_augment

    for name, op in list(auto_augment.NAME_TO_OP.items()):
        if op is auto_augment.posterize:
            auto_augment.NAME_TO_OP[name] = _posterize


def train_transform(cfg: TrainConfig) -> Callable[[Image.Image], torch.Tensor]:
    """timm's training transform from `train.augment`, after a conversion to RGB (grey
    images become three equal channels)."""
    from timm.data import create_transform

    _patch_timm_posterize()
    aug, prep = cfg.augment, model_preprocessing(cfg)
    timm_steps = create_transform(
        input_size=cfg.image_size,
        is_training=True,
        scale=aug.scale,
        ratio=aug.ratio,
        hflip=aug.hflip,
        # None: no colour jitter (timm's code tests `is not None`; its hint leaves None out)
        color_jitter=cast(Any, aug.color_jitter or None),
        auto_augment=aug.auto_augment,
        interpolation=aug.interpolation,
        mean=tuple(prep["mean"]),
        std=tuple(prep["std"]),
        re_prob=aug.re_prob,
        re_mode=aug.re_mode,
    )
    return v2.Compose([v2.RGB(), timm_steps])


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's, Python's and numpy's global generators seeded for the block and restored
    after: timm's augmentations draw from all three (RandomResizedCrop and RandAugment
    from Python's, AugMix and Mixup from numpy's, flips and erasing from torch's)."""
    python, numpy = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)


class SizedDataset(Protocol):
    """A map-style dataset of (image, class index) samples that knows its length (torch's
    Dataset declares no `__len__`)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> tuple[Any, int]: ...


class SeededSamples(Dataset):
    """Real and synthetic images behind one index (real first), each drawn with its own
    augmentation seed, so an image's crop and flip do not depend on which worker or which
    run (first or resumed) loads it."""

    def __init__(self, real: SizedDataset, synthetic: SizedDataset | None) -> None:
        self.real, self.synthetic = real, synthetic
        self.num_real = len(real)

    def __len__(self) -> int:
        return self.num_real + (len(self.synthetic) if self.synthetic else 0)

    def __getitem__(self, sample: tuple[int, int]) -> tuple[torch.Tensor, int, bool]:
        """(image, class index, whether it is synthetic)."""
        index, seed = sample
        with seeded(seed):
            if index < self.num_real:
                return (*self.real[index], False)
            assert self.synthetic is not None
            return (*self.synthetic[index - self.num_real], True)

"""Mixup and CutMix that keep the two domains apart.

A micro-batch holds its real images first and its synthetic ones after (auxiliary BN
splits there). timm's `Mixup` pairs each image with its mirror in the batch, so on the
whole batch it would blend real images with synthetic ones and feed the main batch norm
synthetic pixels. Here it runs on each part alone, unless `train.mixup.across_domains`.
Its random draws (numpy's) are seeded per micro-batch, so a resumed run mixes as an
uninterrupted one.
"""

from __future__ import annotations

import torch

from diversynth.config import MixupConfig
from diversynth.run.seeding import derive_seed
from diversynth.stages.train.data import seeded


class DomainMixup:
    def __init__(
        self, cfg: MixupConfig, num_classes: int, label_smoothing: float, seed: int
    ) -> None:
        from timm.data import Mixup

        self.cfg, self.seed = cfg, seed
        self._mixup = Mixup(
            mixup_alpha=cfg.mixup_alpha,
            cutmix_alpha=cfg.cutmix_alpha,
            prob=cfg.prob,
            switch_prob=cfg.switch_prob,
            mode="batch",
            label_smoothing=label_smoothing,
            num_classes=num_classes,
        )

    def __call__(self, x: torch.Tensor, y: torch.Tensor, real: int,
                 micro: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Mixed images and soft targets for micro-batch `micro`, whose first `real`
        images are real."""
        parts = [(0, len(x))] if self.cfg.across_domains else [(0, real), (real, len(x))]
        images, targets = [], []
        for k, (start, stop) in enumerate(parts):
            if stop == start:
                continue
            with seeded(derive_seed(self.seed, micro, k, attempt=7)):
                mixed, soft = self._mixup(x[start:stop].clone(), y[start:stop])
            images.append(mixed)
            targets.append(soft)
        return torch.cat(images), torch.cat(targets)

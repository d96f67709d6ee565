"""Named training recipes: presets for the `train` section, each from a published recipe.

`train.recipe: NAME` fills every `train` key the config leaves unset (nested sections key
by key); a key the config sets wins. Batch sizes and learning rates are the published
ones: on fewer GPUs, lower `batch_size` and scale `lr` with it (linear rule). Epochs are
the published ones too; `warmup_fraction` is the published warmup over those epochs.

    diversynth recipes            # lists them
    diversynth run CONFIG --set train.recipe=resnet50-tv2
"""

from __future__ import annotations

from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    # torchvision's ResNet-50 recipe (80.9% ImageNet top-1 with EMA; "How to Train
    # State-Of-The-Art Models Using TorchVision's Latest Primitives", 2021, the
    # IMAGENET1K_V2 weights; timm's resnet50.tv2_in1k): SGD 0.5 at batch 1024, 600 epochs,
    # cosine with 5 linear warmup epochs, label smoothing 0.1, mixup 0.2, cutmix 1.0,
    # TrivialAugment, random erasing 0.1, EMA, weight decay 2e-5, train at 176 px.
    "resnet50-tv2": {
        "model": "resnet50",
        "image_size": 176,
        "epochs": 600,
        "batch_size": 1024,
        "optimizer": "sgd",
        "lr": 0.5,
        "weight_decay": 2e-5,
        "warmup_fraction": 5 / 600,
        "label_smoothing": 0.1,
        "augment": {
            "scale": [0.08, 1.0],
            "ratio": [0.75, 4 / 3],
            "interpolation": "bilinear",
            # TrivialAugment: one op a picture, magnitude uniform over the range (timm's
            # RandAugment with n1 and mstd > 100)
            "auto_augment": "rand-n1-mstd101-inc1",
            "re_prob": 0.1,
        },
        "mixup": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0},
        # torchvision: decay 0.99998 every 32 iterations at batch 1024; per step that is
        # about 0.99937
        "ema": {"decay": 0.9994},
        "validate_every": 10,
    },
    # DeiT (Touvron et al. 2021, "Training data-efficient image transformers", Table 9;
    # timm's deit_small_patch16_224): AdamW 5e-4 x batch / 512 at batch 1024, weight decay
    # 0.05, 300 epochs, 5 warmup epochs, RandAugment rand-m9-mstd0.5-inc1, mixup 0.8,
    # cutmix 1.0, random erasing 0.25, label smoothing 0.1, drop path 0.1, bicubic.
    "deit-small": {
        "model": "deit_small_patch16_224",
        "model_kwargs": {"drop_path_rate": 0.1},
        "image_size": 224,
        "epochs": 300,
        "batch_size": 1024,
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 0.05,
        "warmup_fraction": 5 / 300,
        "label_smoothing": 0.1,
        "augment": {
            "scale": [0.08, 1.0],
            "ratio": [0.75, 4 / 3],
            "interpolation": "bicubic",
            "auto_augment": "rand-m9-mstd0.5-inc1",
            "re_prob": 0.25,
        },
        "mixup": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0},
        "ema": {"decay": 0.99996},
        "validate_every": 10,
    },
}


def with_recipe(train: dict[str, Any]) -> dict[str, Any]:
    """The `train` settings with the named recipe's values under the ones given."""
    recipe = RECIPES.get(train.get("recipe") or "")
    return train if recipe is None else _under(recipe, train)


def _under(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _under(merged[key], value)
        else:
            merged[key] = value
    return merged

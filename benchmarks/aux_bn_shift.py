"""Does an auxiliary norm help when the extra images come from another domain? Fashion-MNIST.

Offline there are no real synthetic images to train on, so a *proxy* stands in for them:
other Fashion-MNIST training images (correct labels) rendered with shifted statistics:
lower contrast, brighter, with a noise texture. It is a proxy for the statistics gap of
synthetic images only, not for their content. Three settings, each with the same real
images, the same steps and the same real images per batch:

- real only: batches of `--real` real images;
- real + proxy, shared norm: each batch adds `--extra` proxy images;
- real + proxy, auxiliary norm: the same batches, proxy images through norm layers of
  their own (auxiliary BN for the CNN, auxiliary LayerNorm affine pairs for the ViT).

`--recipe NAME` trains as that named recipe (diversynth.models.recipes) augments: each image
through the train stage's own transform (RandomResizedCrop, the recipe's RandAugment or
TrivialAugment policy, random erasing, the model's mean/std), seeded per image, and the
recipe's mixup/cutmix within each domain (the train stage's DomainMixup) with soft-target
cross-entropy. Without it, the train stage's default: the whole image, flipped half the
time, the model's mean/std.

Top-1 on the real Fashion-MNIST test set (centre-crop evaluation as the train stage
does), mean and spread over seeds, is written to benchmarks/results/, whichever way it
comes out.

    .venv/bin/python benchmarks/aux_bn_shift.py [--arch cnn|vit] [--recipe resnet50-tv2]
        [--train 2000] [--epochs 4] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from _results import machine, write_result
from PIL import Image

from diversynth.config import TrainConfig
from diversynth.data.eval_sets import eval_transform
from diversynth.data.real import FASHION_FILES, read_idx
from diversynth.models.aux_bn import real_first
from diversynth.models.classifier import convert_auxiliary
from diversynth.models.recipes import RECIPES, with_recipe
from diversynth.run.seeding import derive_seed
from diversynth.stages.train.data import model_preprocessing, seeded, train_transform
from diversynth.stages.train.mixing import DomainMixup

ROOT = Path(__file__).resolve().parents[1]

DATA = Path("/usr/share/datasets/fashion-mnist")
SETTINGS = ("real only", "shared norm", "aux norm")
# Two small models at 32 px: a ResNet with batch norm, and a ViT (patches of 4 px, 64
# tokens) whose only norms are LayerNorms; each with the optimizer its family trains with.
ARCHS = {
    "cnn": {"model": "resnet10t", "model_kwargs": {}, "aux_norm": "batchnorm",
            "optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4},
    "vit": {"model": "vit_tiny_patch16_224",
            "model_kwargs": {"img_size": 32, "patch_size": 4, "embed_dim": 128, "depth": 4,
                             "num_heads": 4},
            "aux_norm": "layernorm", "optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05},
}  # fmt: skip


def load(split: str, limit: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    images, labels = (np.array(read_idx(DATA / name)) for name in FASHION_FILES[split])
    return images[start : start + limit], labels[start : start + limit]


def proxy_domain(x: np.ndarray, seed: int) -> np.ndarray:
    """Lower contrast, brighter, and a fixed-seed noise texture (uint8 in, uint8 out)."""
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.from_numpy(x).float().div(255).unsqueeze(1)
    texture = F.avg_pool2d(torch.randn(pixels.shape, generator=gen), 3, 1, 1) * 0.35
    shifted = (0.45 * pixels + 0.35 + texture).clamp(0, 1)
    return shifted.mul(255).round().byte().squeeze(1).numpy()


def train_config(arch: str, recipe: str | None) -> TrainConfig:
    """The train stage's settings: the recipe's augmentation and mixup at 32 px."""
    base = {k: v for k, v in ARCHS[arch].items() if k not in ("optimizer", "lr", "weight_decay")}
    if recipe is None:  # the train stage's default: the whole image, flipped half the time
        return TrainConfig(**base, image_size=32)
    chosen = with_recipe({"recipe": recipe})
    return TrainConfig(
        **base,
        image_size=32,
        recipe=recipe,
        augment=chosen["augment"],
        mixup=chosen["mixup"],
        label_smoothing=chosen["label_smoothing"],
    )


class Images:
    """uint8 pictures through a transform, each with its own seed (as SeededSamples)."""

    def __init__(self, pixels: np.ndarray, transform):
        self.pictures = [Image.fromarray(p, mode="L") for p in pixels]
        self.transform = transform

    def batch(self, indices: list[int], seeds: list[int]) -> torch.Tensor:
        out = []
        for i, seed in zip(indices, seeds, strict=True):
            with seeded(seed):
                out.append(self.transform(self.pictures[i]))
        return torch.stack(out)


def train_one(setting: str, seed: int, cfg: TrainConfig, data: dict, args) -> float:
    arch = ARCHS[args.arch]
    torch.manual_seed(seed)
    model = timm.create_model(cfg.model, num_classes=10, **cfg.model_kwargs)
    if setting == "aux norm":
        convert_auxiliary(model, cfg.aux_norm)
    if arch["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=arch["lr"], momentum=0.9,
                                    nesterov=True, weight_decay=arch["weight_decay"])  # fmt: skip
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=arch["lr"],
                                      weight_decay=arch["weight_decay"])  # fmt: skip
    per_epoch = len(data["real_y"]) // args.real
    steps = args.epochs * per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, arch["lr"], total_steps=steps)
    mixup = (DomainMixup(cfg.mixup, 10, cfg.label_smoothing, seed)
             if cfg.mixup.enabled else None)  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        if step % per_epoch == 0:
            order = torch.randperm(len(data["real_y"]), generator=gen)
        real = order[(step % per_epoch) * args.real :][: args.real].tolist()
        x = data["real"].batch(real, [derive_seed(seed, step, i) for i in range(len(real))])
        y = data["real_y"][real]
        if setting != "real only":
            pick = torch.randint(0, len(data["proxy_y"]), (args.extra,), generator=gen).tolist()
            seeds = [derive_seed(seed, step, len(real) + i) for i in range(len(pick))]
            x = torch.cat([x, data["proxy"].batch(pick, seeds)])
            y = torch.cat([y, data["proxy_y"][pick]])
        with real_first(model, len(real)):
            if mixup is not None:
                x, soft = mixup(x, y, len(real), step)
                loss = torch.sum(-soft * F.log_softmax(model(x), dim=-1), dim=-1).mean()
            else:
                loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        hits = sum(
            int((model(data["test_x"][i : i + 500]).argmax(1) == data["test_y"][i : i + 500]).sum())
            for i in range(0, len(data["test_y"]), 500)
        )
    return 100 * hits / len(data["test_y"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="cnn")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                        help="augment and mix as this recipe (default: flips only)")  # fmt: skip
    parser.add_argument("--train", type=int, default=2000, help="real training images")
    parser.add_argument("--proxy", type=int, default=4000, help="proxy images (2x the real set)")
    parser.add_argument("--test", type=int, default=5000)
    parser.add_argument("--real", type=int, default=32, help="real images per batch")
    parser.add_argument("--extra", type=int, default=32, help="proxy images per batch")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=None, help="result name (default from arch, recipe)")
    args = parser.parse_args()
    cfg = train_config(args.arch, args.recipe)
    train_tf, eval_tf = train_transform(cfg), eval_transform(model_preprocessing(cfg))
    x, y = load("train", args.train)
    proxy_x, proxy_y = load("train", args.proxy, start=args.train)
    test_x, test_y = load("test", args.test)
    data = {
        "real": Images(x, train_tf), "real_y": torch.from_numpy(y).long(),
        "proxy": Images(proxy_domain(proxy_x, 1234), train_tf),
        "proxy_y": torch.from_numpy(proxy_y).long(),
        "test_x": torch.stack([eval_tf(Image.fromarray(p, mode="L")) for p in test_x]),
        "test_y": torch.from_numpy(test_y).long(),
    }  # fmt: skip
    results: dict[str, list[float]] = {}
    start = time.perf_counter()
    for seed in args.seeds:
        for setting in SETTINGS:
            top1 = train_one(setting, seed, cfg, data, args)
            results.setdefault(setting, []).append(round(top1, 2))
            print(f"seed {seed} {setting}: top-1 {top1:.2f}%", flush=True)
    summary = {
        setting: {"top1": values, "mean": round(statistics.mean(values), 2),
                  "stdev": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0}
        for setting, values in results.items()
    }  # fmt: skip
    arch = ARCHS[args.arch]
    result = {
        "machine": machine(),
        "command": "python benchmarks/aux_bn_shift.py "
        f"--arch {args.arch}{f' --recipe {args.recipe}' if args.recipe else ''} "
        f"--train {args.train} --proxy {args.proxy} --test {args.test} "
        f"--real {args.real} --extra {args.extra} --epochs {args.epochs} "
        f"--seeds {' '.join(map(str, args.seeds))}",
        "model": f"{cfg.model} {cfg.model_kwargs or ''}".strip(),
        "auxiliary_norm": cfg.aux_norm,
        "optimizer": f"{arch['optimizer']} lr {arch['lr']} wd {arch['weight_decay']}, one-cycle",
        "augment": cfg.augment.model_dump(),
        "mixup": cfg.mixup.model_dump() if cfg.mixup.enabled else None,
        "proxy": "other Fashion-MNIST training images at 0.45x contrast, +0.35 brightness, "
        "with a blurred noise texture (sd 0.35): a stand-in for the statistics gap of "
        "synthetic images, not for their content",
        "real_test_top1": summary,
        "seconds": round(time.perf_counter() - start, 1),
    }
    default = ["aux_bn_shift", args.arch, args.recipe or "default"]
    name = args.out or "_".join(default).replace("-", "_")
    write_result(name, result)


if __name__ == "__main__":
    main()

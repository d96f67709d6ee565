"""What work costs on a GPU: the cards' peak rates, and what training will cost: FLOPs an
image of the timm model at its image size (counted on the meta device: no weights, no
memory), images seen, and GPU-hours per card.

Hours come from a measured rate (benchmarks/results/train_speed_gpu.json: ResNet-50,
224 px, bf16 on an H100): the fraction of the card's peak the model reached there is
assumed for every model and card, and said so. The measured input pipeline (JPEG shards
decoded by the loader workers) was slower than the model; hours at its rate are given
too, as the upper end: which bound holds depends on the machine's CPUs and
`train.decode_on`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from diversynth.config import RunConfig

RESULTS = Path(__file__).resolve().parents[3] / "benchmarks" / "results"
MEASURED_FILE = "train_speed_gpu.json"
# dense fp16/bf16 tensor-core peaks (no sparsity), from the vendors' data sheets
CARDS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}
# ImageNet-1k's training split: the count assumed for its catalog when no data is configured
IMAGENET_TRAIN = 1_281_167


@dataclass
class TrainingCost:
    model: str
    image_size: int
    flops_per_image: float  # forward and backward (3x the forward pass)
    real_images: int | None
    real_source: str
    images_seen: int | None = None
    # card -> (hours at the model's measured rate, hours at the measured loader's rate)
    gpu_hours: dict[str, tuple[float, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@cache
def forward_flops(model: str, image_size: int, num_classes: int,
                  kwargs_json: str = "{}") -> float:  # fmt: skip
    """FLOPs of one image's forward pass (FlopCounterMode counts a multiply-add as 2)."""
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = timm.create_model(model, num_classes=num_classes, **json.loads(kwargs_json))
        batch = torch.empty(1, 3, image_size, image_size)
    net.eval()  # one image: batch norm in training mode would refuse a 1x1 map
    with FlopCounterMode(display=False) as counter:
        net(batch)
    return float(counter.get_total_flops())


def train_flops(config: RunConfig, num_classes: int) -> float:
    cfg = config.train
    kwargs = json.dumps(cfg.model_kwargs, sort_keys=True, default=str)
    return 3 * forward_flops(cfg.model, cfg.image_size, num_classes, kwargs)


def real_image_count(config: RunConfig) -> tuple[int | None, str]:
    """The real training images and where the count comes from."""
    if config.data is not None and Path(config.data.root).exists():
        from diversynth.data.subset import real_train_counts

        return int(real_train_counts(config).sum()), "counted in data.root"
    if config.classes.catalog == "imagenet1k":
        return IMAGENET_TRAIN, "ImageNet-1k's training split; assumed: no data section"
    return None, "no data section: the real training set is unknown"


def images_seen(config: RunConfig, real: int, synthetic: bool) -> int:
    """Images through the model: whole steps of batch_size, each with its real share, for
    train.epochs passes over the real set (as the train stage counts them)."""
    cfg = config.train
    synthetic_per = round(cfg.batch_size * cfg.synthetic_fraction) if synthetic else 0
    real_per = cfg.batch_size - synthetic_per
    return cfg.epochs * (real // real_per) * cfg.batch_size


@cache
def measured_rates() -> dict[str, Any] | None:
    """The measurement: card, images/s of the model (eager, resident batches) with and
    without auxiliary BN, the loader's images/s and workers, and the model's FLOPs."""
    try:
        data = json.loads((RESULTS / MEASURED_FILE).read_text())
        command = data["command"]
        rates = data["aux_bn_eager"]["images_per_second"]
        loader = data["data_loader"]
    except (OSError, ValueError, KeyError):
        return None
    model = command.split("--model ")[1].split()[0]
    size = int(command.split("--size ")[1].split()[0])
    return {
        "machine": data.get("machine", ""),
        "plain": rates["plain"],
        "aux": rates["aux"],
        "loader": loader["images_per_second"]["from_jpeg_shards"],
        "workers": loader["workers"],
        "flops": 3 * forward_flops(model, size, 1000),
        "size": size,
        "what": f"{model} {size} px, {data.get('precision', '')}".strip(),
    }


def training_cost(config: RunConfig, num_classes: int, cards: dict[str, float],
                  synthetic: bool) -> TrainingCost:  # fmt: skip
    """The training stage's cost for `config` (with synthetic images when `synthetic`)."""
    cfg = config.train
    real, source = real_image_count(config)
    try:
        flops = train_flops(config, num_classes)
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
        cost = TrainingCost(cfg.model, cfg.image_size, 0.0, real, source)
        cost.notes.append(f"training not priced: {cfg.model} did not run on the meta device "
                          f"({str(exc).splitlines()[0][:200]})")  # fmt: skip
        return cost
    cost = TrainingCost(cfg.model, cfg.image_size, flops, real, source)
    if real is None:
        cost.notes.append(f"training not priced: {source}")
        return cost
    cost.images_seen = images_seen(config, real, synthetic)
    measured = measured_rates()
    if measured is None:
        cost.notes.append(f"no measurement in benchmarks/results/{MEASURED_FILE}: no hours")
        return cost
    rate = measured["aux" if cfg.aux and synthetic else "plain"]
    fraction_of = {card: rate * measured["flops"] / peak for card, peak in cards.items()
                   if card in measured["machine"]}  # fmt: skip
    reference = next(iter(fraction_of.items()), None)
    if reference is None:
        cost.notes.append("the training measurement names no known card: no hours")
        return cost
    for card, peak in cards.items():
        fraction = fraction_of.get(card, reference[1])
        model_hours = cost.images_seen * cost.flops_per_image / (peak * fraction) / 3600
        # the loader's rate is its CPUs' (the same with any card), scaled by image area
        loader_rate = measured["loader"] * (measured["size"] / cfg.image_size) ** 2
        loader_hours = cost.images_seen / loader_rate / 3600
        cost.gpu_hours[card] = (model_hours, max(model_hours, loader_hours))
    cost.notes.append(
        f"training hours: {measured['what']} measured on {reference[0]} at "
        f"{rate:,.0f} images/s ({reference[1]:.1%} of peak, assumed for {cfg.model} and every "
        f"card); the higher figure is the measured loader's {measured['loader']:,.0f} "
        f"images/s from JPEG shards with {measured['workers']} workers (scaled by image area)"
    )  # fmt: skip
    return cost

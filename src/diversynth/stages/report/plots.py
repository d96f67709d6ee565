"""Plots with matplotlib, written as PNG (for the page) and SVG (for papers and slides)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig: Any, folder: Path, stem: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    for suffix in ("png", "svg"):
        fig.savefig(folder / f"{stem}.{suffix}")
    plt.close(fig)
    return f"{folder.name}/{stem}.png"


def training_curves(metrics: list[dict[str, Any]], folder: Path) -> str | None:
    """Training loss per step (and the learning rate, when recorded)."""
    rows = [r for r in metrics if "loss" in r and "step" in r]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="loss", color="C0")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    if any("lr" in r for r in rows):
        lr_ax = ax.twinx()
        # a row without "lr" is a gap in the line: matplotlib takes None, its hints do not
        lrs = cast("list[float]", [r.get("lr") for r in rows])
        lr_ax.plot([r["step"] for r in rows], lrs, color="C1", alpha=0.6)
        lr_ax.set_ylabel("learning rate", color="C1")
    return _save(fig, folder, "training_curves")


def validation_curve(metrics: list[dict[str, Any]], folder: Path) -> str | None:
    """Validation top-1 on the real test split over epochs (train.validate_every)."""
    rows = [r for r in metrics if "val_top1" in r and "epoch" in r]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    ax.plot([r["epoch"] for r in rows], [r["val_top1"] for r in rows], marker="o",
            label="real test split")  # fmt: skip
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, folder, "validation")


def accuracy_vs_scale(points: dict[str, list[tuple[float, float]]], folder: Path) -> str | None:
    """Top-1 against synthetic scale, one line per evaluation set (the paper's headline)."""
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for set_name, series in sorted(points.items()):
        series = sorted(series)
        ax.plot([x for x, _ in series], [y for _, y in series], marker="o", label=set_name)
    ax.set_xlabel("synthetic images (multiple of the real training set)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, folder, "accuracy_vs_scale")


def diversity_bars(diversity: dict[str, dict[str, Any]], folder: Path,
                   what: str = "prompt") -> str | None:  # fmt: skip
    """Vendi score and mean cosine distance of prompts (or images), per strategy."""
    if not diversity:
        return None
    names = list(diversity)
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 2.6), dpi=100)
    for ax, key, label in (
        (axes[0], "vendi", "Vendi score (per class)"),
        (axes[1], "mean_cosine_distance", "mean cosine distance"),
    ):
        ax.bar(names, [diversity[n][key] for n in names], color=["C0", "C2", "C3"][: len(names)])
        ax.set_title(label, fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{what} diversity", fontsize="medium")
    return _save(fig, folder, f"{what}_diversity")


def frequency_group_bars(groups: list[tuple[str, dict[str, float | None]]],
                         folder: Path) -> str | None:  # fmt: skip
    """Top-1 of many-shot, medium and few-shot classes, one bar per run (name, top-1 by
    group) in each group: real only beside real + synthetic."""
    if not groups:
        return None
    kinds = ["many", "medium", "few"]
    width = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    for i, (name, top1) in enumerate(groups):
        values = [top1.get(k) for k in kinds]
        heights = [v if v is not None else float("nan") for v in values]  # no classes: no bar
        ax.bar([g + i * width for g in range(3)], heights, width, label=name)
    ax.set_xticks([g + width * (len(groups) - 1) / 2 for g in range(3)],
                  ["many-shot", "medium-shot", "few-shot"])  # fmt: skip
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, folder, "frequency_groups")


def sweep_figure(panels: dict[str, dict[str, list[tuple[float, float, float, float]]]],
                 folder: Path) -> str | None:  # fmt: skip
    """The paper's figure: top-1 against synthetic scale, one panel per evaluation set,
    one line per strategy (or other combination), the mean over seeds with its spread
    (minimum to maximum) shaded. panels: set -> line -> [(scale, mean, spread low, high)]."""
    if not panels:
        return None
    names = sorted(panels)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names) + 1.2, 3.6), dpi=100,
                             squeeze=False)  # fmt: skip
    for ax, set_name in zip(axes[0], names, strict=True):
        for line, points in sorted(panels[set_name].items()):
            points = sorted(points)
            xs = [p[0] for p in points]
            ax.plot(xs, [p[1] for p in points], marker="o", label=line)
            ax.fill_between(xs, [p[2] for p in points], [p[3] for p in points], alpha=0.2)
        ax.set_title(set_name, fontsize="medium")
        ax.set_xlabel("synthetic images (x the real training set)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize="small")
    return _save(fig, folder, "sweep_top1_vs_scale")

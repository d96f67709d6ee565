"""CLIP name selection: diversynth's incremental search against naive full re-scoring.

Both run the same coordinate ascent over the same similarity matrix (images x candidate
names) and must end on the same names. The baseline scores a candidate by recomputing the
whole set's zero-shot predictions (an argmax over every class for every image); diversynth
keeps each image's top-2 classes and scores all of a class's candidates against them at
once. Synthetic CLIP-like features stand in for encoded images and texts (the encoders run
once either way and are not what is compared): unit class prototypes in 512 dimensions,
images and candidate names scattered around them, and some candidates pulled towards
another class (the "crane" that also matches the machine).

    .venv/bin/python benchmarks/classes_clip_select.py [--classes 100 300] [--full 1000]

Prints median seconds of 3 runs and the ratio for each size, then diversynth alone at
`--full` classes (ImageNet-1k scale: 10 exemplars and 6 candidates per class).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from _results import write_result

from diversynth.stages.classes.select_clip import clip_select

ROOT = Path(__file__).resolve().parents[1]


def problem(classes: int, exemplars: int = 10, candidates: int = 6, dim: int = 512, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    protos = torch.nn.functional.normalize(torch.randn(classes, dim, generator=gen), dim=1)
    labels = torch.arange(classes).repeat_interleave(exemplars)
    images = protos[labels] + 2.5 * torch.randn(len(labels), dim, generator=gen) / dim**0.5
    owner = torch.arange(classes).repeat_interleave(candidates)
    other = torch.randint(0, classes, (len(owner),), generator=gen)
    pull = torch.rand(len(owner), 1, generator=gen) * 0.9  # how much a name means another class
    texts = (1 - pull) * protos[owner] + pull * protos[other]
    texts = texts + 1.0 * torch.randn(texts.shape, generator=gen) / dim**0.5
    sims = (
        torch.nn.functional.normalize(images, dim=1) @ torch.nn.functional.normalize(texts, dim=1).T
    )
    by_class = [list(range(c * candidates, (c + 1) * candidates)) for c in range(classes)]
    keys = [f"name {i}" for i in range(len(owner))]
    start = [cols[0] for cols in by_class]
    return sims, labels, by_class, keys, start


def naive_select(sims, labels, by_class, keys, tiebreak, start, max_passes=10) -> list[int]:
    """The same ascent, scoring each candidate by recomputing every prediction."""
    choice = list(start)
    holder = {keys[col]: cls for cls, col in enumerate(choice)}
    for _ in range(max_passes):
        changed = False
        for cls, cols in enumerate(by_class):
            if len(cols) < 2:
                continue

            def correct(col: int, cls: int = cls) -> int:
                trial = list(choice)
                trial[cls] = col
                return int((sims[:, trial].argmax(1) == labels).sum())

            best = choice[cls]
            best_key = (correct(best), tiebreak[best], 1)
            for col in cols:
                if holder.get(keys[col], cls) != cls:
                    continue
                key = (correct(col), tiebreak[col], 0)
                if key > best_key:
                    best, best_key = col, key
            if best != choice[cls]:
                del holder[keys[choice[cls]]]
                holder[keys[best]] = cls
                choice[cls] = best
                changed = True
        if not changed:
            break
    return choice


def timed(fn, *args) -> tuple[float, list[int]]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--full", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} threads {torch.get_num_threads()}",
        "sizes": [],
    }
    for classes in args.classes:
        sims, labels, by_class, keys, start = problem(classes)
        tiebreak = [0.0] * len(keys)
        ours, base = [], []
        for _ in range(args.repeats):
            t_ours, result = timed(clip_select, sims, labels, by_class, keys, tiebreak, start)
            t_base, choice = timed(naive_select, sims, labels, by_class, keys, tiebreak, start)
            assert choice == result.choice, "the two searches must pick the same names"
            ours.append(t_ours)
            base.append(t_base)
        row = {
            "classes": classes,
            "images": len(labels),
            "candidates": len(keys),
            "diversynth_s": statistics.median(ours),
            "naive_s": statistics.median(base),
        }
        row["speedup"] = row["naive_s"] / row["diversynth_s"]
        start_acc = float((sims[:, start].argmax(1) == labels).float().mean())
        row["top1_start"], row["top1_chosen"] = (
            start_acc,
            result.correct[result.choice[0]] / len(labels),
        )
        results["sizes"].append(row)
        print(
            f"{classes} classes: diversynth {row['diversynth_s']:.3f} s, "
            f"naive {row['naive_s']:.3f} s, "
            f"speedup {row['speedup']:.1f}x (top-1 {start_acc:.3f} -> {row['top1_chosen']:.3f})"
        )
    sims, labels, by_class, keys, start = problem(args.full)
    times = [
        timed(clip_select, sims, labels, by_class, keys, [0.0] * len(keys), start)[0]
        for _ in range(args.repeats)
    ]
    results["full"] = {
        "classes": args.full,
        "images": len(labels),
        "candidates": len(keys),
        "diversynth_s": statistics.median(times),
    }
    print(
        f"{args.full} classes, {len(labels)} images, {len(keys)} candidates: diversynth "
        f"{statistics.median(times):.2f} s (median of {args.repeats})"
    )
    write_result("classes_clip_select", results)


if __name__ == "__main__":
    main()

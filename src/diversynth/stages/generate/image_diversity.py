"""How diverse the generated images came out, per class and strategy: the Vendi score and
mean pairwise cosine distance of their CLIP image embeddings (the ones the stage scores
images with, kept in each shard's rows file), beside the same metrics of the prompts.

Read shard by shard while the manifest is written. A class's images are consecutive in
prompt order, so only the classes of the shard at hand are held; a class is measured once
a shard no longer holds it (at ImageNet 6x: 7,800 vectors of 512 numbers at a time).
Pooled over classes, each strategy keeps a d x d Gram matrix and a sum of vectors: its
images as one set, at any size.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa

from diversynth.config import STRATEGIES
from diversynth.models.diversity import mean_cosine_distance, vendi_from_gram, vendi_score


class ImageDiversity:
    def __init__(self) -> None:
        self._open: dict[int, dict[str, list[np.ndarray]]] = {}
        self.per_class: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
        self._gram: dict[str, np.ndarray] = {}
        self._sum: dict[str, np.ndarray] = {}
        self._count: dict[str, int] = defaultdict(int)
        self.missing = 0  # images with no embedding (made before they were kept, or unscored)

    def add(self, rows: pa.Table) -> None:
        """A shard's rows (a rows file's table, in key order)."""
        classes = rows.column("class_index").to_pylist()
        if "clip_image" not in rows.column_names:
            self.missing += len(classes)
            self._close(set(classes))
            return
        strategies = rows.column("strategy").cast(pa.string()).to_pylist()
        vectors = rows.column("clip_image").to_pylist()
        for cls, strategy, vector in zip(classes, strategies, vectors, strict=True):
            if vector is None:
                self.missing += 1
                continue
            self._open.setdefault(cls, defaultdict(list))[strategy].append(
                np.asarray(vector, dtype=np.float32)
            )
        self._close(set(classes))

    def _close(self, present: set[int]) -> None:
        """Measure the classes this shard does not hold: none of their images is left."""
        for cls in [c for c in self._open if c not in present]:
            self._measure(cls, self._open.pop(cls))

    def _measure(self, cls: int, by_strategy: dict[str, list[np.ndarray]]) -> None:
        for strategy, vectors in by_strategy.items():
            x = np.stack(vectors)
            x /= np.linalg.norm(x, axis=1, keepdims=True)  # float16 storage: renormalise
            self.per_class[strategy][str(cls)] = {
                "images": len(x),
                "mean_cosine_distance": round(mean_cosine_distance(x), 4),
                "vendi": round(vendi_score(x), 3),
            }
            wide = x.astype(np.float64)
            self._gram[strategy] = self._gram.get(strategy, 0) + wide.T @ wide
            self._sum[strategy] = self._sum.get(strategy, 0) + x.sum(axis=0, dtype=np.float64)
            self._count[strategy] += len(x)

    def summary(self) -> dict[str, Any]:
        """Per strategy: the mean over classes of each metric, the pooled metrics and
        the per-class figures (as the prompts stage reports prompt diversity)."""
        self._close(set())
        result: dict[str, Any] = {}
        for strategy in STRATEGIES:
            classes = self.per_class.get(strategy)
            if not classes:
                continue
            n, total = self._count[strategy], self._sum[strategy]
            pooled_distance = (n * n - float(total @ total)) / (n * (n - 1)) if n > 1 else 0.0
            result[strategy] = {
                "images": n,
                "mean_cosine_distance": round(
                    float(np.mean([c["mean_cosine_distance"] for c in classes.values()])), 4
                ),
                "vendi": round(float(np.mean([c["vendi"] for c in classes.values()])), 3),
                "pooled_mean_cosine_distance": round(max(0.0, pooled_distance), 4),
                "pooled_vendi": round(vendi_from_gram(self._gram[strategy], n), 2),
                "per_class": dict(sorted(classes.items(), key=lambda kv: int(kv[0]))),
            }
        return result

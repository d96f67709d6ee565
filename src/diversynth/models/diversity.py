"""Diversity of a set of prompts: mean pairwise cosine distance and the Vendi score.

The Vendi score (Friedman and Dieng, 2023) is exp of the Shannon entropy of the eigenvalues
of K/n, K the cosine-similarity matrix: the effective number of distinct prompts, from 1
(all the same) to n (all orthogonal). Written here in a few lines of numpy; the
`vendi-score` package would add a dependency for the same formula.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from diversynth.models.safe_weights import loading


def mean_cosine_distance(embeddings: np.ndarray) -> float:
    """1 - the mean cosine similarity of distinct pairs of unit vectors. The sum of all
    pairwise similarities is |sum x|^2, so no n x n matrix is made (80,000 prompts: 24 GB)."""
    n = len(embeddings)
    if n < 2:
        return 0.0
    total = embeddings.sum(axis=0, dtype=np.float64)
    distance = (n * n - float(total @ total)) / (n * (n - 1))  # diagonal terms: 1 - 1 = 0
    return max(0.0, distance)  # rounding can leave -1e-8 for identical texts


def vendi_score(embeddings: np.ndarray) -> float:
    n = len(embeddings)
    if n == 0:
        return 0.0
    return vendi_from_gram(_gram(embeddings), n)


def vendi_from_gram(gram: np.ndarray, n: int) -> float:
    """The Vendi score of n unit vectors from their Gram matrix (X X^T or X^T X): a set
    can be summed into X^T X part by part and scored at the end."""
    eigenvalues = np.linalg.eigvalsh(gram / n)
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    return float(np.exp(-(eigenvalues * np.log(eigenvalues)).sum()))


def _gram(x: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """X X^T or X^T X, whichever is smaller (they share their non-zero eigenvalues), in
    float64; X^T X is summed a chunk of rows at a time, so n prompts (or images) cost d x d
    memory, not n x d in float64."""
    if len(x) <= x.shape[1]:
        x = x.astype(np.float64)
        return x @ x.T
    gram = np.zeros((x.shape[1], x.shape[1]))
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].astype(np.float64)
        gram += part.T @ part
    return gram


CHUNK = 2048  # texts per encode call: sorted by length within, a progress step between


class Embedder:
    """Sentence embeddings (normalised) from a sentence-transformers model folder."""

    def __init__(self, model: str) -> None:
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.utils.logging.disable_progress_bar()
        with loading("prompts.embedder", model):
            self._model = SentenceTransformer(
                model, device="cpu", trust_remote_code=False,
                model_kwargs={"use_safetensors": True},
            )  # fmt: skip

    def __call__(
        self, texts: list[str], progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """Unit vectors of the texts, embedded CHUNK at a time (`progress` is told each
        chunk's size)."""
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        parts = []
        for start in range(0, len(texts), CHUNK):
            part = texts[start : start + CHUNK]
            parts.append(self._model.encode(
                part, normalize_embeddings=True, convert_to_numpy=True, batch_size=64
            ))  # fmt: skip
            if progress is not None:
                progress(len(part))
        return np.concatenate(parts)


def print_diversity(diversity: dict[str, Any], what: str) -> None:
    """The console table of a stage's diversity summary (`what`: prompt or image)."""
    from rich.table import Table

    from diversynth.run.progress import console

    table = Table(
        "strategy", "cosine distance", "Vendi score", "pooled cosine distance", "pooled Vendi",
        title=f"{what} diversity (per class, mean over classes; and all classes pooled)",
    )  # fmt: skip
    for strategy, row in diversity.items():
        table.add_row(
            strategy,
            f"{row['mean_cosine_distance']:.3f}",
            f"{row['vendi']:.2f}",
            f"{row['pooled_mean_cosine_distance']:.3f}",
            f"{row['pooled_vendi']:.2f}",
        )
    console.print(table)

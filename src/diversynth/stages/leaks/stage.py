"""The `leaks` stage: synthetic images that are (near) copies of an evaluation image.

A text-to-image model trained on web data can reproduce images of public test sets; a
gain measured on a set the generator has copied is not a gain. Each synthetic image's CLIP
embedding (kept by the generate stage in its shard's rows file) is compared with the CLIP
embedding of every image of the real test split and of each `evaluate.sets` folder: exact
search, by chunked matrix products on the CLIP device (a GPU multiplies 7.7M x 130k
512-dimension vectors in seconds; faiss would add a dependency and an approximation for no
gain at this size). Synthetic images whose nearest evaluation image is at least
`leaks.threshold` cosine similarity away are listed in leaks.json, counted per class and
set; the closest pairs are saved as thumbnails for the report. `train.exclude_leaks: true`
leaves them out of training.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from typing import Any

import numpy as np
import torch
from PIL import Image

from diversynth.config import RunConfig
from diversynth.run.artifacts.records import read_classes
from diversynth.run.artifacts.shard_plan import planned_shards
from diversynth.run.artifacts.shards import is_done, read_rows, read_stats
from diversynth.run.progress import console, counting
from diversynth.run.rundir import RunDir, write_json

THUMB = 128  # px, the longer side of a pair's saved thumbnails


class _Set:
    """An evaluation set: its images' unit CLIP embeddings (float16 on the device), labels
    and ids (the file under the set's root, or `test/ROW` for Fashion-MNIST)."""

    def __init__(self, name: str, dataset: Any, ids: list[str], clip: Any,
                 batch_size: int) -> None:  # fmt: skip
        self.name, self.dataset, self.ids = name, dataset, ids
        labels = getattr(dataset, "labels", None)  # real splits; an ImageFolder: targets
        self.labels = np.asarray(labels if labels is not None else dataset.targets)
        parts = []
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
        with counting(f"leaks: embedding {name}", len(dataset), "images") as progress:
            for pixels, _ in loader:
                with torch.inference_mode():
                    features = clip.model.encode_image(pixels.to(clip.device))
                parts.append(torch.nn.functional.normalize(features.float(), dim=-1).half())
                progress(len(pixels))
        self.embeddings = torch.cat(parts) if parts else torch.zeros(0, 1, dtype=torch.half)

    def image(self, i: int) -> Image.Image:
        """The evaluation image itself (for the pair thumbnails)."""
        raw = self.dataset.transform
        self.dataset.transform = lambda image: image
        try:
            return self.dataset[i][0]
        finally:
            self.dataset.transform = raw


def evaluation_sets(config: RunConfig, run: RunDir, clip: Any) -> list[_Set]:
    """The sets evaluation scores (the real test split, evaluate.sets), CLIP-embedded."""
    from diversynth.data.eval_sets import evaluation_sets as sets

    classes = read_classes(run)
    return [_Set(s.name, s.dataset, s.ids, clip, config.leaks.batch_size)
            for s in sets(config, run, classes, clip.preprocess)]  # fmt: skip


def _nearest(vectors: torch.Tensor, sets: list[_Set], chunk: int = 8192) -> tuple[np.ndarray, ...]:
    """For each vector: the highest similarity to any evaluation image, that image's set
    and index."""
    best = torch.full((len(vectors),), -2.0)
    where = torch.zeros(len(vectors), dtype=torch.long)
    which = torch.zeros(len(vectors), dtype=torch.long)
    for k, s in enumerate(sets):
        for start in range(0, len(s.embeddings), chunk):
            part = s.embeddings[start : start + chunk]
            sims = (vectors @ part.T).float().cpu()
            top, index = sims.max(dim=1)
            better = top > best
            best[better], where[better], which[better] = top[better], index[better] + start, k
    return best.numpy(), which.numpy(), where.numpy()


def run_leaks(config: RunConfig, run: RunDir) -> dict[str, Any]:
    cfg = config.leaks
    result: dict[str, Any] = {"checked": False, "threshold": cfg.threshold}
    if not cfg.check or config.clip is None:
        result["reason"] = "leaks.check is false" if not cfg.check else "no clip section"
        write_json(run.leaks, {**result, "leaked_keys": []})
        return result
    from diversynth.models.clip import ClipScorer

    clip = ClipScorer.load(config.clip)
    sets = evaluation_sets(config, run, clip)
    checked = missing = 0
    leaked: list[dict[str, Any]] = []  # every image at or above the threshold
    closest: list[tuple[float, str, dict[str, Any]]] = []  # the pairs shown, a heap
    shards = [s for s in planned_shards(config, run) if is_done(run.shards, s.name)]
    with counting("leaks: comparing", sum(s.images for s in shards), "images") as progress:
        for shard in shards:
            rows = read_rows(run.shards, shard.name, read_stats(run.shards, shard.name))
            progress(rows.num_rows)
            if "clip_image" not in rows.column_names:
                missing += rows.num_rows
                continue
            embedded = [i for i, v in enumerate(rows.column("clip_image").to_pylist()) if v]
            missing += rows.num_rows - len(embedded)
            if not embedded:
                continue
            table = rows.take(embedded)
            vectors = torch.tensor(np.asarray(table.column("clip_image").to_pylist(),
                                              dtype=np.float16), device=clip.device)  # fmt: skip
            vectors = torch.nn.functional.normalize(vectors.float(), dim=-1).half()
            best, which, where = _nearest(vectors, sets)
            checked += len(embedded)
            keys = table.column("key").to_pylist()
            labels = table.column("class_index").to_pylist()
            for i in range(len(keys)):
                found = sets[which[i]]
                pair = {"key": keys[i], "class_index": labels[i],
                        "similarity": round(float(best[i]), 4), "set": found.name,
                        "eval_index": int(where[i]), "eval_id": found.ids[where[i]],
                        "eval_class_index": int(found.labels[where[i]])}  # fmt: skip
                if best[i] >= cfg.threshold:
                    leaked.append(pair)
                entry = (float(best[i]), keys[i], pair)
                if len(closest) < cfg.pairs_shown:
                    heapq.heappush(closest, entry)
                else:
                    heapq.heappushpop(closest, entry)
    if not checked:
        result["reason"] = "no synthetic image has a CLIP embedding (generate.clip_score)"
        write_json(run.leaks, {**result, "leaked_keys": [], "without_embedding": missing})
        return result
    pairs = [pair for _, _, pair in sorted(closest, key=lambda e: (-e[0], e[1]))]
    _save_thumbnails(run, pairs, sets)
    per_set = {s.name: {"images": len(s.ids), "leaks": 0, "per_class": {}} for s in sets}
    for name, counts in _per_set_counts(leaked).items():
        per_set[name]["leaks"] = sum(counts.values())
        per_set[name]["per_class"] = {str(k): v for k, v in sorted(counts.items())}
    result.update(checked=True, synthetic_images=checked, without_embedding=missing,
                  leaks=len(leaked), sets=per_set)  # fmt: skip
    write_json(run.leaks, {**result, "closest_pairs": pairs,
                           "leaked_keys": sorted(p["key"] for p in leaked)})  # fmt: skip
    _print(result, pairs)
    return result


def _per_set_counts(leaked: list[dict[str, Any]]) -> dict[str, Counter[int]]:
    counts: dict[str, Counter[int]] = {}
    for pair in leaked:
        counts.setdefault(pair["set"], Counter())[pair["class_index"]] += 1
    return counts


def _pairs_listed(run: RunDir) -> int:
    """How many pairs (and evaluation thumbnails) the run's leaks.json lists (0 when it
    has none, or it cannot be read)."""
    try:
        return len(json.loads(run.leaks.read_text()).get("closest_pairs", []))
    except (OSError, ValueError, AttributeError):
        return 0


def _save_thumbnails(run: RunDir, pairs: list[dict[str, Any]], sets: list[_Set]) -> None:
    """The evaluation image of each listed pair, as RUN/leaks/eval-NNN.jpg (the report
    shows it beside the synthetic image, which it reads from its shard)."""
    folder = run.leak_thumbs
    folder.mkdir(exist_ok=True)
    # the images the last leaks.json listed, and only those (others in the folder are not
    # the stage's); those this run lists are written over below
    for rank in range(len(pairs), _pairs_listed(run)):
        (folder / f"eval-{rank:03d}.jpg").unlink(missing_ok=True)
    by_name = {s.name: s for s in sets}
    for rank, pair in enumerate(pairs):
        image = by_name[pair["set"]].image(pair["eval_index"]).convert("RGB")
        image.thumbnail((THUMB, THUMB))  # shrinks a larger image; never enlarges
        image.save(folder / f"eval-{rank:03d}.jpg", quality=90)


def _print(result: dict[str, Any], pairs: list[dict[str, Any]]) -> None:
    lines = [f"{name}: {info['leaks']} of the synthetic images within "
             f"{result['threshold']} of one of its {info['images']} images"
             for name, info in result["sets"].items()]  # fmt: skip
    for line in lines:
        console.print(f"  leaks: {line}", highlight=False)
    if pairs:
        console.print(f"  leaks: closest pair {pairs[0]['key']} ~ {pairs[0]['set']} "
                      f"{pairs[0]['eval_id']} ({pairs[0]['similarity']})", highlight=False,
                      markup=False)  # fmt: skip

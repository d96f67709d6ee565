"""Image diversity from the CLIP image embeddings the generate stage keeps, and the leaks
stage: a test image planted among the synthetic ones is found, listed in the report beside
its source, and left out of training on request."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import OFFLINE_CONFIG, copy_before_generate
from PIL import Image

from diversynth.models.diversity import mean_cosine_distance, vendi_score
from diversynth.run.artifacts.leaks import LeakError, leaked_keys
from diversynth.stages.generate.image_diversity import ImageDiversity
from diversynth.stages.leaks.stage import _nearest


def _rows(classes: list[int], strategies: list[str], vectors: np.ndarray) -> pa.Table:
    return pa.table({
        "class_index": classes, "strategy": strategies,
        "clip_image": pa.array(vectors.astype(np.float16).tolist(), pa.list_(pa.float16())),
    })  # fmt: skip


def test_image_diversity_per_class_strategy_and_pooled() -> None:
    rng = np.random.default_rng(0)
    same = np.tile(rng.normal(size=8), (4, 1))  # four copies of one image
    spread = np.eye(8)[:4]  # four orthogonal images
    vectors = np.concatenate([same, spread, spread, same])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    tally = ImageDiversity()
    # class 0 spans two shards (its images are consecutive); class 1 is in the second
    tally.add(_rows([0] * 6, ["naive"] * 4 + ["sd"] * 2, vectors[:6]))
    tally.add(_rows([0, 0] + [1] * 8, ["sd"] * 2 + ["naive"] * 4 + ["sd"] * 4, vectors[6:]))
    summary = tally.summary()
    naive, sd = summary["naive"]["per_class"], summary["sd"]["per_class"]
    assert naive["0"]["vendi"] == pytest.approx(1.0, abs=1e-3)  # one image four times
    assert sd["0"]["vendi"] == pytest.approx(4.0, abs=1e-2)  # four distinct images
    assert sd["0"]["mean_cosine_distance"] == pytest.approx(1.0, abs=1e-3)
    assert naive["1"]["vendi"] == pytest.approx(4.0, abs=1e-2) and sd["1"]["vendi"] < 1.01
    assert summary["naive"]["vendi"] == pytest.approx(2.5, abs=1e-2)  # mean over classes
    pooled = np.concatenate([vectors[:4], vectors[8:12]])  # naive: class 0, then class 1
    pooled = pooled.astype(np.float16).astype(np.float32)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    assert summary["naive"]["pooled_vendi"] == pytest.approx(vendi_score(pooled), abs=0.01)
    assert summary["naive"]["pooled_mean_cosine_distance"] == pytest.approx(
        mean_cosine_distance(pooled), abs=1e-3
    )
    assert summary["naive"]["images"] == 8 and tally.missing == 0
    # shards made before embeddings were kept are counted, not measured
    tally = ImageDiversity()
    tally.add(pa.table({"class_index": [0, 0], "strategy": ["naive", "naive"]}))
    assert tally.summary() == {} and tally.missing == 2


def test_nearest_evaluation_image_in_chunks_equals_brute_force() -> None:
    class Set:
        def __init__(self, embeddings: torch.Tensor):
            self.embeddings = embeddings

    torch.manual_seed(0)
    eval_a = torch.nn.functional.normalize(torch.randn(37, 16), dim=-1).half()
    eval_b = torch.nn.functional.normalize(torch.randn(23, 16), dim=-1).half()
    queries = torch.nn.functional.normalize(torch.randn(11, 16), dim=-1).half()
    best, which, where = _nearest(queries, [Set(eval_a), Set(eval_b)], chunk=5)
    both = torch.cat([eval_a, eval_b]).float()
    sims = queries.float() @ both.T
    expected = sims.max(dim=1)
    assert np.allclose(best, expected.values.numpy(), atol=1e-3)
    flat = np.where(which == 0, where, where + 37)
    assert (flat == expected.indices.numpy()).all()


@pytest.mark.slow
def test_planted_test_image_is_found_listed_and_left_out(
    finished_run: Path, kit_overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diversynth.config import load_config
    from diversynth.data.real import FASHION_FILES, read_idx, real_listing
    from diversynth.models import generator
    from diversynth.pipeline import run_stages
    from diversynth.run.rundir import RunDir
    from diversynth.stages.train.synthetic import synthetic_images

    config = load_config(OFFLINE_CONFIG, kit_overrides)
    run = RunDir(copy_before_generate(finished_run, tmp_path / "run"))
    classes = [json.loads(line) for line in run.classes.read_text().splitlines()]
    source = real_listing(config.data, "test", classes).ids[3]  # type: ignore[arg-type]
    pixels = read_idx(config.data.root / FASHION_FILES["test"][0])[int(source.split("/")[1])]  # type: ignore[union-attr]
    planted_seed = json.loads(run.prompts.read_text().splitlines()[7])["image_seeds"][0]
    real_call = generator.TextToImage.__call__

    def planting_call(self, prompts, seeds):  # type: ignore[no-untyped-def]
        images, flagged = real_call(self, prompts, seeds)
        for i, seed in enumerate(seeds):
            if seed == planted_seed:  # the model "reproduces" a test image
                images[i] = Image.fromarray(pixels).convert("RGB").resize(images[i].size)
        return images, flagged

    monkeypatch.setattr(generator.TextToImage, "__call__", planting_call)
    run_stages(config, run, stages=["generate", "leaks", "report"])
    planted = "p00000007_i000"
    leaks = json.loads(run.leaks.read_text())
    assert leaks["checked"] and leaks["leaks"] == 1 and leaks["leaked_keys"] == [planted]
    top = leaks["closest_pairs"][0]
    assert (top["key"], top["eval_id"], top["set"]) == (planted, source, "fashion-mnist/test")
    assert top["similarity"] >= 0.9995 > leaks["closest_pairs"][1]["similarity"]
    assert leaks["sets"]["fashion-mnist/test"]["per_class"] == {str(top["class_index"]): 1}
    assert len(leaks["closest_pairs"]) == config.leaks.pairs_shown
    saved = Image.open(run.leak_thumbs / "eval-000.jpg")
    assert np.asarray(saved.convert("L")).shape == pixels.shape  # the test image itself

    # the report: the leakage section with the pair side by side, and image diversity
    html = (run.report_dir / "index.html").read_text()
    section = html[html.index('id="leakage"') : html.index("<h2>Generation</h2>")]
    assert "1 of 100 synthetic images are at or above 0.9995" in section
    assert section.count('class="pair leak"') == 1 and planted in section
    assert 'src="leaks/eval-000.jpg"' in section
    thumb = section.split('<img src="', 1)[1].split('"', 1)[0]
    assert thumb.startswith("thumbs/") and (run.report_dir / thumb).is_file()
    assert (run.report_dir / "leaks" / "eval-000.jpg").is_file()
    generate = run.read_state("generate").summary  # type: ignore[union-attr]
    assert set(generate["image_diversity"]) == {"naive", "cd", "sd"}
    assert generate["images_without_embedding"] == 0
    strategies = html[html.index('id="strategies"') : html.index('id="leakage"')]
    assert "image Vendi score" in strategies
    vendi = generate["image_diversity"]["sd"]["vendi"]
    assert f'<td class="num">{vendi:.3f}</td>' in strategies
    assert (run.report_dir / "plots" / "image_diversity.png").is_file()

    # train.exclude_leaks: the training stage's synthetic images less the planted one
    kept = synthetic_images(run, 1000, None, lambda im: im, leaked_keys(run))
    every = synthetic_images(run, 1000, None, lambda im: im)
    assert kept is not None and every is not None and len(kept) == len(every) - 1
    row = next(r for r in _rows_of(run.manifest) if r["key"] == planted)
    places = {(kept.shards[s], int(o)) for s, o in zip(kept.shard_ids, kept.offsets, strict=True)}
    assert (row["shard"], row["jpg_offset"]) not in places
    run.leaks.write_text(json.dumps({"checked": False, "reason": "no clip section"}))
    with pytest.raises(LeakError, match="checked nothing \\(no clip section\\)"):
        leaked_keys(run)


def _rows_of(manifest: Path) -> list[dict]:
    from diversynth.run.artifacts.manifest import read_manifest

    return read_manifest(manifest, ["key", "shard", "jpg_offset"]).to_pylist()

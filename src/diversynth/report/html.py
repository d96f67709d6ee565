"""The `report` stage: report/index.html with classes, sample prompts, thumbnails and metrics.

Thumbnails are cut straight from the shards (no unpacking to disk) and named by image key;
every text from a class list or a prompt goes through Jinja's autoescaping.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image

from diversynth.config import RunConfig
from diversynth.generate.manifest import read_manifest
from diversynth.rundir import RunDir, read_jsonl, write_text

STAGE_ORDER = ("classes", "prompts", "generate", "train", "evaluate")


def _thumbnails(run: RunDir, keys: set[str], folder: Path, size: int) -> None:
    """Write `folder/KEY.jpg` thumbnails for the wanted keys, reading each shard once."""
    folder.mkdir(parents=True, exist_ok=True)
    for tar_path in sorted(run.shards.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if ext == "jpg" and key in keys:
                    image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
                    image.thumbnail((size, size))
                    image.save(folder / f"{key}.jpg", quality=85)


def _loss_plot(run: RunDir, out: Path) -> str | None:
    if not run.train_metrics.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(run.train_metrics)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "train_loss.png")
    plt.close(fig)
    return "train_loss.png"


def run_report(config: RunConfig, run: RunDir) -> dict[str, Any]:
    cfg = config.report
    classes = read_jsonl(run.classes)
    prompts = read_jsonl(run.prompts)
    prompt_text = {p["prompt_id"]: p["text"] for p in prompts}
    rows = read_manifest(run.manifest).to_pylist() if run.manifest.is_file() else []

    by_class: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_class[row["class_index"]].append(row)
    prompts_by_class: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for p in prompts:
        prompts_by_class[p["class_index"]].append(p)

    staging = run.root / "report.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    wanted = {r["key"] for c in classes for r in by_class[c["index"]][: cfg.images_per_class]}
    _thumbnails(run, wanted, staging / "thumbs", cfg.thumbnail_size)

    def clip_mean(items: list[dict[str, Any]]) -> str:
        scores = [r["clip_class"] for r in items if r["clip_class"] is not None]
        return f"{sum(scores) / len(scores):.3f}" if scores else "-"

    view_classes = [
        {
            **c,
            "images": len(by_class[c["index"]]),
            "clip_mean": clip_mean(by_class[c["index"]]),
            "prompts": _distinct(prompts_by_class[c["index"]], cfg.prompts_per_class),
            "thumbs": [
                {
                    "src": f"thumbs/{r['key']}.jpg",
                    "prompt": prompt_text[r["prompt_id"]],
                    "seed": r["seed"],
                    "clip": "-" if r["clip_prompt"] is None else f"{r['clip_prompt']:.3f}",
                }
                for r in by_class[c["index"]][: cfg.images_per_class]
            ],
        }
        for c in classes
    ]
    stages = []
    for name in STAGE_ORDER:
        state = run.read_state(name)
        if state is not None:
            stages.append({**state.__dict__, "summary_text": json.dumps(state.summary)})
    env = Environment(
        loader=PackageLoader("diversynth.report", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    html = env.get_template("index.html.j2").render(
        name=config.name,
        classes=view_classes,
        prompt_count=len(prompts),
        image_count=len(rows),
        eval=json.loads(run.eval.read_text()) if run.eval.is_file() else None,
        stages=stages,
        loss_plot=_loss_plot(run, staging),
        thumb=cfg.thumbnail_size,
    )
    write_text(staging / "index.html", html)
    shutil.rmtree(run.report_dir, ignore_errors=True)
    staging.rename(run.report_dir)
    return {"classes": len(classes), "thumbnails": len(wanted), "page": "report/index.html"}


def _distinct(prompts: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    for p in prompts:
        seen.setdefault(p["text"], p)
    return list(seen.values())[:limit]

"""The `prompts` stage: classes.jsonl -> prompts.jsonl (prompt id, class, text, seeds)."""

from __future__ import annotations

from typing import Any

from diversynth.config import RunConfig
from diversynth.rundir import RunDir, read_jsonl, write_jsonl
from diversynth.seeding import derive_seed


def naive_prompts(name: str, templates: list[str], count: int) -> list[str]:
    """`count` prompts cycling through the templates ("a photo of a {name}.")."""
    return [templates[i % len(templates)].format(name=name) for i in range(count)]


def run_prompts(config: RunConfig, run: RunDir) -> dict[str, Any]:
    cfg = config.prompts
    records = []
    for cls in read_jsonl(run.classes):
        for text in naive_prompts(cls["name"], cfg.templates, cfg.per_class):
            prompt_id = len(records)
            records.append(
                {
                    "prompt_id": prompt_id,
                    "class_index": cls["index"],
                    "strategy": "naive",
                    "text": text,
                    "seed": derive_seed(config.seed, prompt_id, 0),
                    "image_seeds": [
                        derive_seed(config.seed, prompt_id, i) for i in range(cfg.images_per_prompt)
                    ],
                }
            )
    write_jsonl(run.prompts, records)
    return {
        "prompts": len(records),
        "images": len(records) * cfg.images_per_prompt,
        "per_strategy": {"naive": len(records)},
    }

"""How much of the LLM's contexts and styles are its own: the offline demo's prompts stage.

Runs the classes and prompts stages of configs/offline.yaml (10 Fashion-MNIST classes,
SmolLM2-135M through llama.cpp) in a scratch folder and counts, over the final prompts:

- CD context phrases and SD styles (the LLM's; built-in styles left out) that repeat a
  phrase of *any* worked example in the pool, after folding case, punctuation and
  articles, or as a near copy (MiniLM cosine similarity >= prompts.copy_threshold);
- prompt texts that appear twice within a class;
- what the stage's summary says: phrases rejected as copies, the share of phrases shared
  by more than a quarter of the classes, the diversity of each strategy.

    .venv/bin/python benchmarks/prompt_leakage.py [--set prompts.few_shot=false ...]
    .venv/bin/python benchmarks/prompt_leakage.py --run RUN_DIR   # count an existing run
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

from _results import machine, write_result

from diversynth.config import load_config
from diversynth.models.diversity import Embedder
from diversynth.pipeline import run_stages
from diversynth.run.artifacts.records import read_prompts
from diversynth.run.rundir import RunDir
from diversynth.stages.prompts.examples import EXAMPLES, fold
from diversynth.stages.prompts.styles import BUILTIN_STYLES

ROOT = Path(__file__).resolve().parents[1]


def repeats_of_the_pool(phrases: list[str], strategy: str, embedder: Embedder,
                        threshold: float) -> int:  # fmt: skip
    """How many of the phrases repeat a phrase of any example in the pool."""
    pool = sorted({p for e in EXAMPLES for p in e.phrases(strategy)})
    if not phrases:
        return 0
    folded = {fold(p) for p in pool}
    similarity = embedder(phrases) @ embedder(pool).T
    return sum(
        1 for p, row in zip(phrases, similarity, strict=True)
        if fold(p) in folded or float(row.max()) >= threshold
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--run", type=Path, help="count this run's prompts (runs nothing)")
    parser.add_argument("--out", default="prompt_leakage")
    args = parser.parse_args()
    config = load_config(ROOT / "configs" / "offline.yaml", args.overrides)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(args.run or Path(tmp))
        if args.run is None:
            run_stages(config, run, ["classes", "prompts"])
        prompts = read_prompts(run)
        state = json.loads((run.root / ".state" / "prompts.json").read_text())
        summary = {**state["summary"], "seconds": state.get("seconds")}
    seconds = time.perf_counter() - start
    embedder = Embedder(config.prompts.embedder)
    builtin = {fold(s) for s in BUILTIN_STYLES}
    contexts = [c for p in prompts for c in p.get("contexts", [])]
    styles = [p["style"] for p in prompts if "style" in p and fold(p["style"]) not in builtin]
    threshold = config.prompts.copy_threshold
    texts = Counter((p["class_index"], p["text"]) for p in prompts)
    result = {
        "machine": machine(),
        "command": "python benchmarks/prompt_leakage.py"
        + "".join(f" --set {o}" for o in args.overrides)
        + (f" --run {args.run}" if args.run else ""),
        "llm": summary["llm"],
        "llm_calls": summary["llm_calls"],
        "prompts": len(prompts),
        "images": summary["images"],
        "cd_phrases": len(contexts),
        "cd_phrases_repeating_an_example": repeats_of_the_pool(
            contexts, "cd", embedder, threshold
        ),  # fmt: skip
        "sd_llm_styles": len(styles),
        "sd_styles_repeating_an_example": repeats_of_the_pool(styles, "sd", embedder, threshold),
        "sd_prompts": sum(1 for p in prompts if p["strategy"] == "sd"),
        "texts_repeated_within_a_class": sum(n - 1 for n in texts.values()),
        "per_strategy": summary["per_strategy"],
        "shortfall_classes": len(summary["shortfall"]),
        "copies_rejected": summary.get("copies_rejected"),
        "repeated_texts_merged": summary.get("repeated_texts"),
        "shared_phrases": summary.get("shared_phrases"),
        "examples_shown": summary.get("examples_shown"),
        "vendi": {s: d["vendi"] for s, d in summary["diversity"].items()},
        "pooled_vendi": {s: d["pooled_vendi"] for s, d in summary["diversity"].items()},
        "stage_seconds": summary.get("seconds"),
        "seconds": round(seconds, 1),
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()

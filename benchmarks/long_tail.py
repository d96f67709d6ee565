"""Fashion-MNIST made long-tailed, through the whole pipeline: real only against real +
synthetic with a uniform and with an inverse budget, top-1 of many-shot, medium and
few-shot classes, over seeds.

The real set is `data.subset: {per_class: HEAD, imbalance: 100}` (class i keeps HEAD x
100^(-i/9) images, CIFAR-LT's exponential profile); the test split is balanced. Each
seed runs the classes, prompts, generate, train and evaluate stages of configs/offline.yaml
changed to naive prompts (no LLM) and the kit's tiny random-weight pipeline, so the
synthetic images are noise: this measures the bookkeeping (each class's images equal its
budget; the frequency groups and per-class top-1 in eval.json), not the method's gain.

    .venv/bin/python benchmarks/long_tail.py [--seeds 0 1 2] [--epochs 10] [--head 500]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import yaml
from _results import log, machine, write_result

from diversynth.config import validate_config
from diversynth.pipeline import run_stages
from diversynth.run.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]

STAGES = ["classes", "prompts", "generate", "train", "evaluate"]
GROUPS = ("many", "medium", "few")


def config(seed: int, budget: str, args: argparse.Namespace) -> Any:
    data = yaml.safe_load((ROOT / "configs" / "offline.yaml").read_text())
    data.pop("llm")
    data["seed"] = seed
    data["prompts"] = {"per_class": 10, "images_per_prompt": args.images_per_class // 10,
                       "shares": {"naive": 1.0}, "templates": "clip-imagenet",
                       "budget": {"kind": budget}}  # fmt: skip
    tiny = ROOT / "models" / "tiny"
    data["generate"].update(model=str(tiny / "stable-diffusion"), steps=2, height=32, width=32,
                            images_per_shard=500, cpu_threads=1)  # fmt: skip
    data["clip"]["model"] = f"local-dir:{tiny / 'open-clip'}"
    data["data"] = {"format": "fashion-mnist", "root": data["data"]["root"],
                    "test_limit": args.test_images,
                    "subset": {"per_class": args.head, "imbalance": args.imbalance,
                               "seed": 0}}  # fmt: skip
    data["train"].update(epochs=args.epochs, synthetic_fraction=0.5, checkpoint_every=10_000,
                         tensorboard=False)  # fmt: skip
    return validate_config(data)


def summary(run: Path, stage: str) -> dict[str, Any]:
    return json.loads((run / ".state" / f"{stage}.json").read_text())["summary"]


def scores(run: Path) -> dict[str, Any]:
    test = json.loads((run / "eval.json").read_text())["sets"]["fashion-mnist/test"]
    return {"top1": test["top1"], "mean_class_top1": test["mean_class_top1"],
            **{k: test["groups"][k]["top1"] for k in GROUPS},
            "classes": {k: test["groups"][k]["classes"] for k in GROUPS}}  # fmt: skip


def bookkeeping(run: Path) -> dict[str, Any]:
    """Each class's synthetic images against its budget, and the real images it trained on."""
    budget = summary(run, "prompts")["budget"]
    made = np.bincount(pq.read_table(run / "manifest.parquet")["class_index"].to_numpy(),
                       minlength=len(budget["images_per_class"])).tolist()  # fmt: skip
    return {"budget": budget["images_per_class"], "generated": made,
            "generated_equals_budget": made == budget["images_per_class"],
            "real_per_class": budget.get("real_per_class")}  # fmt: skip


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.mean(values), 2),
            "stdev": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--head", type=int, default=500, help="real images of class 0")
    parser.add_argument("--imbalance", type=float, default=100)
    parser.add_argument("--images-per-class", type=int, default=100, help="uniform budget")
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--out", default="long_tail")
    args = parser.parse_args()
    start = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {"real only": [], "uniform": [], "inverse": []}
    books: dict[str, list[dict[str, Any]]] = {"uniform": [], "inverse": []}
    with tempfile.TemporaryDirectory(prefix="long-tail-") as scratch:
        for seed in args.seeds:
            for budget in ("uniform", "inverse"):
                run = Path(scratch) / f"{budget}-{seed}"
                log(f"seed {seed}: {budget} budget")
                run_stages(config(seed, budget, args), RunDir(run), stages=STAGES)
                runs[budget].append({"seed": seed, **scores(run)})
                books[budget].append(bookkeeping(run))
            real_only = Path(scratch) / f"real-only-{seed}"
            shutil.copytree(Path(scratch) / f"uniform-{seed}", real_only)
            cfg = config(seed, "uniform", args)
            cfg.train.synthetic_fraction = 0.0
            log(f"seed {seed}: real only")
            run_stages(cfg, RunDir(real_only), stages=["train", "evaluate"], force=["train"])
            runs["real only"].append({"seed": seed, **scores(real_only)})
    table = {
        name: {key: spread([r[key] for r in rows])
               for key in ("top1", "mean_class_top1", *GROUPS)}
        for name, rows in runs.items()
    }  # fmt: skip
    differences = {
        name: {key: round(table[name][key]["mean"] - table["real only"][key]["mean"], 2)
               for key in ("top1", "mean_class_top1", *GROUPS)}
        for name in ("uniform", "inverse")
    }  # fmt: skip
    print(f"{'':10} {'top-1':>13} {'per-class':>13} " + " ".join(f"{g:>13}" for g in GROUPS))
    for name, row in table.items():
        cells = [f"{row[k]['mean']:6.2f} ± {row[k]['stdev']:4.2f}"
                 for k in ("top1", "mean_class_top1", *GROUPS)]  # fmt: skip
        print(f"{name:10} " + " ".join(f"{c:>13}" for c in cells))
    write_result(args.out, {
        "command": " ".join(["python benchmarks/long_tail.py", *sys.argv[1:]]),
        "machine": machine(),
        "setting": (f"Fashion-MNIST, long tail per_class {args.head} x imbalance "
                    f"{args.imbalance:g} (exponential), balanced test split of "
                    f"{args.test_images}; naive prompts, the kit's tiny random-weight SD "
                    f"pipeline (noise images), {args.images_per_class} synthetic images a "
                    f"class on average; resnet10t, {args.epochs} epochs, aux BN, half of "
                    "each batch synthetic; groups: many > 100, few < 20 real images"),
        "seeds": args.seeds,
        "top1": table,
        "difference_from_real_only": differences,
        "runs": runs,
        "bookkeeping": books,
        "all_generated_equal_budget": all(b["generated_equals_budget"]
                                          for rows in books.values() for b in rows),
        "seconds": round(time.perf_counter() - start),
    })  # fmt: skip


if __name__ == "__main__":
    main()

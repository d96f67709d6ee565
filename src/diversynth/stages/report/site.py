"""The report site: an overview page and one page per class for a run, and a comparison page
across runs. Static files that open from disk; every text from a class list, a prompt or an
LLM goes through Jinja's autoescaping, and pages are named by class index, never by name."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from diversynth.config import STRATEGIES
from diversynth.run.rundir import write_text
from diversynth.stages.report import plots
from diversynth.stages.report.facts import RunFacts
from diversynth.stages.report.owned import SiteFiles
from diversynth.stages.report.thumbs import make_thumbnails

STRATEGY_LABELS = {"naive": "naive (templates)", "cd": "contextualized (CD)", "sd": "stylized (SD)"}
CONFIG_KEYS = [
    ("classes", "classes.catalog"),
    ("disambiguation", "classes.disambiguate.mode"),
    ("prompts per class", "prompts.per_class"),
    ("strategy shares", "prompts.shares"),
    ("LLM", "llm.model"),
    ("text-to-image model", "generate.model"),
    ("steps", "generate.steps"),
    ("guidance scale", "generate.guidance_scale"),
    ("size", "generate.height"),
    ("CLIP", "clip.model"),
    ("real data", "data.root"),
    ("classifier", "train.model"),
    ("epochs", "train.epochs"),
    ("synthetic share of a batch", "train.synthetic_fraction"),
]


def _env() -> Environment:
    return Environment(
        loader=PackageLoader("diversynth.stages.report", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )


def _copy_assets(site: Path) -> None:
    folder = site / "assets"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("report.css", "report.js"):
        source = resources.files("diversynth.stages.report").joinpath(f"static/{name}")
        write_text(folder / name, source.read_text(encoding="utf-8"))


def _dig(data: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def class_page(index: int) -> str:
    return f"classes/{int(index):05d}.html"


def eval_rows(facts: RunFacts) -> list[dict[str, Any]]:
    sets = (facts.eval or {}).get("sets", {})
    return [
        {
            "name": name,
            "images": row.get("images"),
            "top1": row.get("top1"),
            "top5": row.get("top5", ""),
        }
        for name, row in sets.items()
    ]


GROUPS = ("many", "medium", "few")


def frequency_rows(facts: RunFacts) -> list[dict[str, Any]]:
    """Per evaluation set: mean per-class top-1 and top-1 of many-shot, medium and
    few-shot classes (each with its class count), where evaluate recorded them."""
    rows = []
    for name, row in (facts.eval or {}).get("sets", {}).items():
        if "groups" not in row:
            continue
        cells = [
            f"{_fmt(g.get('top1'), 2)} ({g.get('classes', 0)})"
            for g in (row["groups"].get(k, {}) for k in GROUPS)
        ]
        rows.append({"name": name, "mean": _fmt(row.get("mean_class_top1"), 2), "cells": cells})
    return rows


def class_accuracy(facts: RunFacts, position: int) -> list[dict[str, Any]]:
    """The class's top-1 on each evaluation set that recorded per-class top-1."""
    rows = []
    for name, row in (facts.eval or {}).get("sets", {}).items():
        per_class = row.get("class_top1") or []
        if position < len(per_class):
            rows.append({"set": name, "top1": _fmt(per_class[position], 2)})
    return rows


def worst_classes(facts: RunFacts, limit: int = 10) -> tuple[str, list[dict[str, Any]]]:
    """The first evaluation set's name and its `limit` classes of lowest top-1."""
    for name, row in (facts.eval or {}).get("sets", {}).items():
        per_class = row.get("class_top1") or []
        scored = [(top1, position) for position, top1 in enumerate(per_class)
                  if top1 is not None and position < len(facts.classes)]  # fmt: skip
        worst = sorted(scored)[:limit]
        rows = []
        for top1, position in worst:
            entry = facts.classes[position]
            rows.append({"name": entry["name"], "page": class_page(entry["index"]),
                         "top1": _fmt(top1, 2)})  # fmt: skip
        return name, rows
    return "", []


def _flat(data: Any, prefix: str = "") -> dict[str, str]:
    """A config as dotted keys and their values (lists whole, as JSON)."""
    if not isinstance(data, dict):
        return {prefix: json.dumps(data, sort_keys=True)}
    flat: dict[str, str] = {}
    for key, value in data.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


MAX_DIFFERENCES = 80


def config_differences(runs: list[RunFacts]) -> tuple[list[dict[str, Any]], list[str]]:
    """The settings whose values differ between the runs (one row each), and warnings
    when what the accuracies are measured on differs: the real data or the evaluation
    sets. Then a difference in top-1 is not the synthetic images' doing."""
    flats = [_flat({k: v for k, v in f.config.items() if k != "name"}) for f in runs]
    keys = sorted({key for flat in flats for key in flat})
    differing = [key for key in keys if len({flat.get(key, "(not set)") for flat in flats}) > 1]
    rows = [{"key": key, "cells": [flat.get(key, "(not set)") for flat in flats]}
            for key in differing[:MAX_DIFFERENCES]]  # fmt: skip
    warnings = []
    data = [key for key in differing if key.startswith("data.") or key == "data"]
    if data:
        warnings.append(f"The runs train on different real data ({', '.join(data[:4])} "
                        "differ): a difference in top-1 is not the synthetic images' "
                        "alone.")  # fmt: skip
    sets = [key for key in differing if key.startswith("evaluate.sets")]
    if sets or data:
        warnings.append("The runs are evaluated on different sets"
                        + (" (evaluate.sets differ)" if sets else " (their test splits come "
                           "from different real data)")
                        + ": their accuracies are not comparable set by set.")  # fmt: skip
    return rows, warnings


def _group_top1(facts: RunFacts) -> dict[str, float | None] | None:
    """The first evaluation set's top-1 per frequency group (the real test split)."""
    for row in (facts.eval or {}).get("sets", {}).values():
        if "groups" in row:
            return {k: row["groups"].get(k, {}).get("top1") for k in GROUPS}
    return None


def _flags(row: dict[str, Any]) -> str:
    marks = list(row.get("flags") or [])
    if (row.get("attempt") or 0) > 0:
        marks.append(f"regenerated x{row['attempt']}")
    return ", ".join(marks)


def leakage_section(facts: RunFacts, thumbs: dict[str, str]) -> dict[str, Any] | None:
    """What the leaks stage found, for the overview: per set, and the closest pairs with
    the thumbnails of both images (None when the stage has not run)."""
    leaks = facts.leaks
    if leaks is None:
        return None
    if not leaks.get("checked"):
        return {"checked": False, "reason": leaks.get("reason", "")}
    names = {c["index"]: c["name"] for c in facts.classes}
    sets = []
    for name, info in leaks.get("sets", {}).items():
        worst = sorted(info["per_class"].items(), key=lambda kv: (-kv[1], int(kv[0])))[:5]
        most = ", ".join(f"{names.get(int(k), k)} ({n})" for k, n in worst)
        sets.append({"name": name, "images": info["images"], "leaks": info["leaks"],
                     "classes": most})  # fmt: skip
    pairs = [
        {**pair, "class_name": names.get(pair["class_index"], pair["class_index"]),
         "thumb": thumbs.get(pair["key"]), "eval_thumb": f"leaks/eval-{rank:03d}.jpg",
         "leak": pair["similarity"] >= leaks["threshold"]}
        for rank, pair in enumerate(leaks.get("closest_pairs", []))
    ]  # fmt: skip
    excluded = bool((facts.config.get("train") or {}).get("exclude_leaks"))
    return {"checked": True, "threshold": leaks["threshold"], "leaks": leaks["leaks"],
            "images": leaks["synthetic_images"], "sets": sets, "pairs": pairs,
            "excluded": excluded}  # fmt: skip


def _copy_leak_thumbnails(facts: RunFacts, site: SiteFiles) -> None:
    """The evaluation images of the closest pairs, saved by the leaks stage."""
    import shutil

    folder = site.site / "leaks"
    site.remove_tree(folder)
    source = facts.run.leak_thumbs
    if facts.leaks is None or not source.is_dir():
        return
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("eval-*.jpg")):
        shutil.copyfile(path, folder / path.name)


def _overview(facts: RunFacts, up: str | None, plot_list: list[dict[str, Any]],
              thumbs: dict[str, str]) -> str:  # fmt: skip
    prompts = facts.summary("prompts")
    diversity = prompts.get("diversity", {})
    images = facts.summary("generate").get("image_diversity", {})
    counts = facts.counts_by_strategy()
    shared = prompts.get("shared_phrases", {})
    strategies = [
        {
            "label": STRATEGY_LABELS[s],
            **counts[s],
            "vendi": _fmt(diversity.get(s, {}).get("vendi")),
            "cosine": _fmt(diversity.get(s, {}).get("mean_cosine_distance")),
            "pooled_vendi": _fmt(diversity.get(s, {}).get("pooled_vendi")),
            "image_vendi": _fmt(images.get(s, {}).get("vendi")),
            "image_cosine": _fmt(images.get(s, {}).get("mean_cosine_distance")),
            "copies": _fmt(prompts.get("copies_rejected", {}).get(s)),
            "shared": f"{100 * shared[s]:.0f}%" if s in shared else "-",
        }
        for s in STRATEGIES
    ]
    gen = facts.summary("generate")
    flags = facts.image_flags()
    generation = [
        ("images", facts.image_count()),
        ("shards", gen.get("shards", "-")),
        ("images/s (last generate run)", _fmt(gen.get("images_per_second"))),
        ("regenerated images", flags.pop("regenerated")),
        *((f"flagged: {flag}", n) for flag, n in sorted(flags.items())),
    ]
    train = facts.summary("train")
    training = [(key.replace("_", " "), _fmt(value)) for key, value in train.items()]
    budget = prompts.get("budget", {})
    real, planned = budget.get("real_per_class"), budget.get("images_per_class")
    classes = [
        {
            **c,
            "page": class_page(c["index"]),
            "prompts": len(facts.prompts_by_class.get(c["index"], [])),
            "images": facts.image_count(c["index"]),
            "clip": _fmt(facts.by_class.mean_clip.get(c["index"])),
            "real": real[position] if real else None,
            "budget": planned[position] if planned else None,
        }
        for position, c in enumerate(facts.classes)
    ]
    stages = [
        {"name": name, "seconds": f"{state.seconds:.1f}", "summary": json.dumps(state.summary)}
        for name, state in facts.states.items()
        if name != "report"
    ]
    return (
        _env()
        .get_template("overview.html.j2")
        .render(
            root="",
            run=facts,
            up=up,
            scale=facts.synthetic_scale(),
            eval_rows=eval_rows(facts),
            frequency_rows=frequency_rows(facts),
            worst=worst_classes(facts),
            budget_kind=budget.get("kind", "uniform"),
            show_real=real is not None,
            strategies=strategies,
            leakage=leakage_section(facts, thumbs),
            generation=generation,
            training=training or [("", "not trained yet")],
            plots=plot_list,
            classes=classes,
            stages=stages,
            config_rows=[
                (label, _fmt(_dig(facts.config, key)))
                for label, key in CONFIG_KEYS
                if _dig(facts.config, key) is not None
            ],
        )
    )


def _class_page(facts: RunFacts, position: int, cfg: Any, thumbs: dict[str, str]) -> str:
    c = facts.classes[position]
    rows = facts.first_images(c["index"], cfg.images_per_class)
    prompts = facts.prompt_text
    candidates = [
        {
            "text": cand["text"],
            "source": cand["source"],
            "winner": cand["text"] == c["name"],
            "score": _fmt(cand.get("score")),
            "facts": ", ".join(
                f"{k} {v}" for k, v in cand.items() if k not in ("text", "source", "score")
            ),
        }
        for cand in sorted(c.get("candidates", []), key=lambda x: -(x.get("score") or 0))
    ]
    groups = []
    for strategy in STRATEGIES:
        texts = [
            p["text"]
            for p in facts.prompts_by_class.get(c["index"], [])
            if p["strategy"] == strategy
        ]
        if texts:
            groups.append(
                {
                    "label": STRATEGY_LABELS[strategy],
                    "prompts": list(dict.fromkeys(texts))[: cfg.prompts_per_class],
                }
            )
    thumb_rows = [r for r in rows if r["key"] in thumbs]
    view = [
        {
            "key": r["key"],
            "src": thumbs[r["key"]],
            "seed": r["seed"],
            "strategy": r["strategy"],
            "prompt": (
                prompts[r["prompt_id"]].get("text", "") if r["prompt_id"] in prompts else ""
            ),
            "clip": _fmt(r.get("clip_prompt")),
            "flags": _flags(r),
        }
        for r in thumb_rows
    ]
    prev = class_page(facts.classes[position - 1]["index"]) if position > 0 else None
    nxt = (
        class_page(facts.classes[position + 1]["index"])
        if position + 1 < len(facts.classes)
        else None
    )
    return (
        _env()
        .get_template("class.html.j2")
        .render(
            root="../",
            run_name=facts.name,
            c=c,
            accuracy=class_accuracy(facts, position),
            candidates=candidates,
            prompt_groups=groups,
            thumbs=view,
            shown=len(view),
            total=facts.image_count(c["index"]),
            size=cfg.thumbnail_size,
            prev=prev and "../" + prev,
            next=nxt and "../" + nxt,
        )
    )


def build_run_site(facts: RunFacts, site: Path, cfg: Any, up: str | None = None) -> dict[str, Any]:
    """Write (or refresh) one run's site under `site`, a folder `claim_site` accepted (or
    the run's own report folder); thumbnails already made are kept. Only files a build
    wrote are removed (report.owned)."""
    owned = SiteFiles(site)
    _copy_assets(site)
    shown = cfg.images_per_class
    wanted = [r for c in facts.classes for r in facts.first_images(c["index"], shown)]
    listed = {r["key"] for r in wanted}
    pairs = (facts.leaks or {}).get("closest_pairs", [])
    wanted += [r for r in facts.rows_of([p["key"] for p in pairs]) if r["key"] not in listed]
    thumbs = make_thumbnails(facts.run, wanted, owned, cfg.thumbnail_size) if wanted else {}
    _copy_leak_thumbnails(facts, owned)
    plot_list = []
    for made, alt, width in (
        (plots.training_curves(facts.train_metrics, site / "plots"), "training curves", 640),
        (plots.validation_curve(facts.train_metrics, site / "plots"), "validation top-1", 640),
        (
            plots.diversity_bars(facts.summary("prompts").get("diversity", {}), site / "plots"),
            "prompt diversity per strategy",
            640,
        ),
        (
            plots.diversity_bars(
                facts.summary("generate").get("image_diversity", {}), site / "plots", "image"
            ),
            "image diversity per strategy (CLIP image embeddings)",
            640,
        ),  # fmt: skip
    ):
        if made:
            plot_list.append({"src": made, "alt": alt, "width": width})
    write_text(site / "index.html", _overview(facts, up, plot_list, thumbs))
    pages = site / "classes"
    pages.mkdir(exist_ok=True)
    keep = set()
    for position, c in enumerate(facts.classes):
        path = site / class_page(c["index"])
        keep.add(path.name)
        write_text(path, _class_page(facts, position, cfg, thumbs))
    for stale in pages.iterdir():
        if stale.name not in keep:
            owned.remove(stale)
    owned.save()
    return {
        "classes": len(facts.classes),
        "thumbnails": len(thumbs),
        "page": str(site / "index.html"),
    }


def build_comparison(runs: list[RunFacts], out: Path, cfg: Any) -> dict[str, Any]:
    """out/index.html compares the runs; each run's own site goes to out/run-N/."""
    owned = SiteFiles(out)
    _copy_assets(out)
    rows: list[dict[str, Any]] = []
    points: dict[str, list[tuple[float, float]]] = {}
    sets: list[str] = []
    for number, facts in enumerate(runs, start=1):
        folder = f"run-{number}"
        build_run_site(facts, out / folder, cfg, up="../index.html")
        scale = facts.synthetic_scale()
        rows.append(
            {
                "name": facts.name,
                "scale": _fmt(scale, 2),
                "classes": len(facts.classes),
                "images": facts.image_count(),
                "folder": str(facts.run.root),
                "page": f"{folder}/index.html",
            }
        )
        for row in eval_rows(facts):
            if row["name"] not in sets:
                sets.append(row["name"])
            if scale is not None and row["top1"] is not None:
                points.setdefault(row["name"], []).append((scale, float(row["top1"])))
    scales = [f.synthetic_scale() for f in runs]
    base = min(range(len(runs)), key=lambda i: (scales[i] is None, scales[i] or 0.0))
    top1 = [{r["name"]: r["top1"] for r in eval_rows(f)} for f in runs]
    table = []
    for set_name in sets:
        cells = []
        for i in range(len(runs)):
            value, ref = top1[i].get(set_name), top1[base].get(set_name)
            if value is None:
                cells.append("-")
            elif i == base or ref is None:
                cells.append(f"{value:.2f}")
            else:
                cells.append(f"{value:.2f} ({value - ref:+.2f})")
        table.append({"set": set_name, "cells": cells})
    differences, warnings = config_differences(runs)
    # runs on different real data are not points of one curve: no line drawn through them
    same_data = not any(row["key"].startswith("data") for row in differences)
    plot = plots.accuracy_vs_scale(points, out / "plots") if same_data else None
    groups = [(row["name"], g) for row, f in zip(rows, runs, strict=True)
              if (g := _group_top1(f)) is not None]  # fmt: skip
    group_plot = plots.frequency_group_bars(groups, out / "plots")
    group_table = [{"name": name, "cells": [_fmt(g[k], 2) for k in GROUPS]} for name, g in groups]
    html = (
        _env()
        .get_template("compare.html.j2")
        .render(
            root="",
            runs=rows,
            plot=plot,
            table=table,
            baseline=rows[base]["name"],
            group_plot=group_plot,
            group_table=group_table,
            differences=differences,
            warnings=warnings,
            same_data=same_data,
        )  # fmt: skip
    )
    write_text(out / "index.html", html)
    owned.save()
    return {"runs": len(runs), "page": str(out / "index.html"), "plot": plot,
            "group_plot": group_plot, "warnings": warnings}  # fmt: skip

"""The sweep's page: the paper's figure (top-1 against synthetic scale, a line per
strategy, a panel per evaluation set, the spread over seeds), the ablation table (each
combination against the real-only training with the same other settings, seed by seed),
and every trial with a link to its own report. Built from results.parquet's rows."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from diversynth.commands.sweep.spec import SYNTHETIC_ONLY
from diversynth.run.rundir import write_text
from diversynth.stages.report import plots
from diversynth.stages.report.owned import SiteFiles, claim_site
from diversynth.stages.report.site import _copy_assets, _env

SCALE, SEED = "train.synthetic_scale", "seed"


def _label(row: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{key.removeprefix('train.')}={row[key]}" for key in keys) or "all"


def _spread(values: list[float]) -> str:
    if len(values) < 2:
        return ""
    return f"± {statistics.stdev(values):.2f}"


def figure_panels(rows: list[dict[str, Any]], axes: list[str]) -> dict[str, Any]:
    """set -> line -> [(scale, mean, min, max)] over seeds; empty without a scale axis."""
    if SCALE not in axes:
        return {}
    lines = [key for key in axes if key not in (SCALE, SEED)]
    values: dict[str, dict[str, dict[float, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))  # fmt: skip
    for row in rows:
        if row[SCALE] is None:  # null: every image of the pool, no point on a scale axis
            continue
        values[row["set"] or "test"][_label(row, lines)][float(row[SCALE])].append(row["top1"])
    return {
        set_name: {
            line: [(x, statistics.fmean(ys), min(ys), max(ys)) for x, ys in sorted(points.items())]
            for line, points in per_line.items()
        }
        for set_name, per_line in values.items()
    }


def _is_real_only(row: dict[str, Any]) -> bool:
    return not row.get("synthetic_used")


def ablation(rows: list[dict[str, Any]], axes: list[str]) -> list[dict[str, Any]]:
    """Each combination (seeds pooled) against the real-only training with the same
    settings that are not about synthetic images, compared seed by seed."""
    keep = [key for key in axes if key != SEED]
    same = [key for key in keep if key.removeprefix("train.") not in SYNTHETIC_ONLY]
    reference: dict[tuple[Any, ...], float] = {}
    for row in rows:
        if _is_real_only(row):
            reference[(row["set"], row.get(SEED), *(row[k] for k in same))] = row["top1"]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["set"], *(row[k] for k in keep))].append(row)
    table = []
    for (set_name, *_), members in groups.items():
        top1 = [m["top1"] for m in members]
        refs = [reference.get((m["set"], m.get(SEED), *(m[k] for k in same))) for m in members]
        deltas = [m["top1"] - ref for m, ref in zip(members, refs, strict=True) if ref is not None]
        delta = statistics.fmean(deltas) if deltas else None
        noise = statistics.stdev(deltas) if len(deltas) > 1 else None
        table.append({
            "set": set_name or "test",
            "combination": _label(members[0], keep),
            "seeds": len(members),
            "top1": f"{statistics.fmean(top1):.2f} {_spread(top1)}".strip(),
            "delta": "-" if delta is None else f"{delta:+.2f} {_spread(deltas)}".strip(),
            # a difference beyond twice its spread over seeds is unlikely to be noise
            "clear": delta is not None and noise is not None and abs(delta) > 2 * noise,
            "real_only": _is_real_only(members[0]),
        })  # fmt: skip
    return table


def worst_classes(runs: list[tuple[bool, dict[str, Any]]], names: list[str],
                  limit: int = 10) -> list[dict[str, Any]]:  # fmt: skip
    """The classes of lowest top-1 without synthetic images (the first evaluation set,
    mean over the real-only trainings), beside their mean top-1 with them. runs: (trained
    on synthetic images, eval.json) of each finished training."""
    sums: dict[bool, list[list[float]]] = {False: [], True: []}
    for with_synthetic, evaluation in runs:
        first: dict[str, Any] = next(iter(evaluation.get("sets", {}).values()), {})
        per_class = first.get("class_top1") or []
        if len(per_class) == len(names):
            sums[with_synthetic].append(per_class)

    def mean(lists: list[list[float]], i: int) -> float | None:
        values = [row[i] for row in lists if row[i] is not None]
        return statistics.fmean(values) if values else None

    table: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        real, synthetic = mean(sums[False], i), mean(sums[True], i)
        if real is None and synthetic is None:
            continue
        table.append({"name": name, "real": real, "synthetic": synthetic})
    table.sort(key=lambda r: r["real"] if r["real"] is not None else r["synthetic"])
    return [{"name": r["name"],
             "real": "-" if r["real"] is None else f"{r['real']:.2f}",
             "synthetic": "-" if r["synthetic"] is None else f"{r['synthetic']:.2f}",
             "delta": ("-" if r["real"] is None or r["synthetic"] is None
                       else f"{r['synthetic'] - r['real']:+.2f}")}
            for r in table[:limit]]  # fmt: skip


def build_sweep_report(rows: list[dict[str, Any]], axes: list[str], out: Path,
                       trial_folder: str = "../trials",
                       classes: list[dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    """out/index.html for the rows of results.parquet (finished trials' rows drawn)."""
    claim_site(out, "sweep report")
    owned = SiteFiles(out)
    _copy_assets(out)
    done = [r for r in rows if r["state"] == "done" and r.get("top1") is not None]
    plot = plots.sweep_figure(figure_panels(done, axes), out / "plots")
    trials: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = trials.setdefault(row["training"], {
            "id": row["training"], "state": row["state"], "combinations": [],
            "page": f"{trial_folder}/{row['training']}/report/index.html",
            "top1": row.get("top1"), "set": row["set"] or "test",
        })  # fmt: skip
        label = _label(row, axes)
        if label not in entry["combinations"]:
            entry["combinations"].append(label)
    html = _env().get_template("sweep.html.j2").render(
        root="", plot=plot, ablation=ablation(done, axes), trials=list(trials.values()),
        combinations=len({r["trial"] for r in rows}), axes=axes, worst=classes or [],
    )  # fmt: skip
    write_text(out / "index.html", html)
    owned.save()
    return {"page": str(out / "index.html"), "plot": plot, "trials": len(trials)}

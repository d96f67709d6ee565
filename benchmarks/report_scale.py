"""Report at ImageNet scale: 1000 classes x 1000 images, page load times in headless Chromium.

Builds a run directory with the files the report reads: the imagenet1k class list, 10
prompts per class, a manifest of 1,000,000 images, and one shard per class holding the
images the class page shows (the other 984 per class are manifest rows only: the report
never opens them). Then builds the site twice (thumbnails made, then kept) and loads the
overview and a class page in headless Chromium, against a baseline of one page with every
class's thumbnails on it (a single-page gallery, the report's former layout).

    .venv/bin/python benchmarks/report_scale.py [--classes 1000] [--per-class 1000]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import statistics
import tarfile
import time
from pathlib import Path

import pyarrow as pa
from _results import write_result
from PIL import Image

from diversynth.config import ReportConfig
from diversynth.data.classes.imagenet import imagenet_catalog
from diversynth.run.artifacts.manifest import SCHEMA, write_manifest
from diversynth.run.rundir import RunDir, sha256_file, write_json, write_jsonl
from diversynth.stages.report.browser import chromium, file_url
from diversynth.stages.report.facts import load_run
from diversynth.stages.report.site import build_run_site
from diversynth.stages.report.thumbs import thumbnail_paths

ROOT = Path(__file__).resolve().parents[1]


def make_run(root: Path, classes: int, per_class: int, shown: int) -> RunDir:
    shutil.rmtree(root, ignore_errors=True)
    run = RunDir(root)
    run.shards.mkdir(parents=True)
    (root / "config.yaml").write_text(
        f"name: scale-bench\nreport: {{images_per_class: {shown}}}\ntrain: {{epochs: 1}}\n"
    )
    entries = imagenet_catalog(None)[:classes]
    write_jsonl(
        run.classes,
        [
            {
                "index": e.index,
                "wnid": e.wnid,
                "raw_name": e.raw_name,
                "name": e.curated or e.raw_name,
                "description": e.description,
                "hypernyms": list(e.hypernyms[:3]),
                "candidates": [{"text": e.raw_name, "score": 0.5, "source": "lemma"}],
                "reason": "benchmark",
            }
            for e in entries
        ],
    )
    prompts = [
        {
            "prompt_id": c * 10 + j,
            "class_index": c,
            "strategy": ("naive", "cd", "sd")[j % 3],
            "text": f"a photo of a {entries[c].raw_name}, variant {j}",
            "seed": j,
        }
        for c in range(classes)
        for j in range(10)
    ]
    write_jsonl(run.prompts, prompts)
    rows = []
    for c in range(classes):
        shard = f"{c:06d}"
        buffer = io.BytesIO()
        Image.new("RGB", (256, 256), ((c * 37) % 256, (c * 91) % 256, (c * 13) % 256)).save(
            buffer, format="JPEG", quality=90
        )
        with tarfile.open(run.shards / f"{shard}.tar", "w") as tar:
            for i in range(per_class):
                key = f"p{c * 10 + i % 10:08d}_i{i:03d}"
                rows.append(
                    {
                        "key": key,
                        "shard": shard,
                        "class_index": c,
                        "prompt_id": c * 10 + i % 10,
                        "image_index": i,
                        "strategy": prompts[c * 10 + i % 10]["strategy"],
                        "seed": i,
                        "attempt": 0,
                        "clip_prompt": 0.3,
                        "clip_class": 0.3,
                        "flags": [],
                    }
                )
                if i < shown:
                    info = tarfile.TarInfo(f"{key}.jpg")
                    info.size = len(buffer.getvalue())
                    tar.addfile(info, io.BytesIO(buffer.getvalue()))
        write_json(
            run.shards / f"{shard}.json", {"sha256": sha256_file(run.shards / f"{shard}.tar")}
        )
    write_manifest(run.manifest, [pa.Table.from_pylist(rows, schema=SCHEMA)])
    return run


def one_page_baseline(site: Path, facts, thumbs_per_class: int) -> Path:
    """Every class's thumbnails on one page: the layout that does not scale."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><link rel='icon' href='data:,'>"
        "</head><body>"
    ]
    for c in facts.classes:
        rows = facts.images_by_class[c["index"]][:thumbs_per_class]
        images = "".join(
            f"<img src='{src}' width=128 height=128>"
            for src in thumbnail_paths(facts.run, rows).values()
        )
        parts.append(f"<h3>{c['index']}</h3><div>{images}</div>")
    page = site / "one-page.html"
    page.write_text("".join(parts) + "</body></html>")
    return page


def load_seconds(driver, url: str) -> float | None:
    """Navigation start to the load event; None if the page did not load within the limit."""
    from selenium.common.exceptions import TimeoutException

    try:
        driver.get(url)
    except TimeoutException:
        return None
    return driver.execute_script(
        "const t = performance.getEntriesByType('navigation')[0];"
        "return (t.loadEventEnd - t.startTime) / 1000;"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--shown", type=int, default=48)
    parser.add_argument("--work", type=Path, default=Path("/tmp/diversynth-report-bench"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--load-limit", type=int, default=60, help="seconds before a page counts as not loaded"
    )
    args = parser.parse_args()

    start = time.perf_counter()
    run = make_run(args.work / "run", args.classes, args.per_class, args.shown)
    made = time.perf_counter() - start
    settings = ReportConfig(images_per_class=args.shown)
    site = args.work / "site"
    shutil.rmtree(site, ignore_errors=True)
    builds = []
    for _ in range(2):  # first: thumbnails made; second: kept
        start = time.perf_counter()
        facts = load_run(run.root)
        build_run_site(facts, site, settings)
        builds.append(time.perf_counter() - start)
    print(f"fixture {made:.1f} s; site built in {builds[0]:.1f} s, again in {builds[1]:.1f} s")
    baseline = one_page_baseline(site, facts, args.shown)

    pages = {
        "overview": file_url(site / "index.html"),
        "class page": file_url(site / "classes" / f"{args.classes // 2:05d}.html"),
    }
    times: dict[str, list[float | None]] = {name: [] for name in pages}
    driver = chromium(1280, 900)
    driver.set_page_load_timeout(args.load_limit)
    try:
        for _ in range(args.repeats):
            for name, url in pages.items():
                times[name].append(load_seconds(driver, url))
    finally:
        driver.quit()
    # the baseline last, in a browser of its own: a page that does not load leaves its
    # renderer busy
    driver = chromium(1280, 900)
    driver.set_page_load_timeout(args.load_limit)
    try:
        times["one-page baseline"] = [load_seconds(driver, file_url(baseline))]
    finally:
        driver.quit()
    medians = {
        name: None if None in values else statistics.median(values)
        for name, values in times.items()
    }
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU; headless Chromium",
        "command": "python benchmarks/report_scale.py "
        f"--classes {args.classes} --per-class {args.per_class} --shown {args.shown}",
        "images": args.classes * args.per_class,
        "fixture_seconds": round(made, 1),
        "build_seconds_first": round(builds[0], 1),
        "build_seconds_again": round(builds[1], 1),
        "load_seconds": {k: None if v is None else round(v, 3) for k, v in medians.items()},
        "load_limit_seconds": args.load_limit,
        "baseline_over_overview": round(medians["one-page baseline"] / medians["overview"], 1)
        if medians["one-page baseline"] and medians["overview"]
        else f"baseline did not load within {args.load_limit} s",
    }
    write_result("report_scale", result)


if __name__ == "__main__":
    main()

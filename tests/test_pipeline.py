"""The offline run end to end: artifacts, skip when up to date, shard resume, reruns on change."""

from __future__ import annotations

import io
import json
import re
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import OFFLINE_CONFIG, REPO, cli, set_args
from PIL import Image

STAGES = ["classes", "prompts", "generate", "leaks", "train", "evaluate", "report"]


def _outcomes(stderr: str) -> dict[str, str]:
    """{stage: 'skipped' | 'ran'} from the CLI output."""
    result = {}
    for line in stderr.splitlines():
        name, _, rest = line.partition(":")
        if name in STAGES:
            if rest.strip() == "skipped: up to date":
                result[name] = "skipped"
            elif rest.strip() == "running":
                result[name] = "ran"
    return result


def _pixels(tar_path: Path) -> dict[str, np.ndarray]:
    with tarfile.open(tar_path) as tar:
        return {
            m.name.split(".")[0]: np.asarray(Image.open(io.BytesIO(tar.extractfile(m).read())))
            for m in tar
            if m.name.endswith(".jpg")
        }


def test_offline_run_leaves_every_artifact(finished_run: Path) -> None:
    run = finished_run
    classes = [json.loads(line) for line in (run / "classes.jsonl").read_text().splitlines()]
    assert [c["index"] for c in classes] == list(range(10))
    assert classes[9]["raw_name"] == "Ankle boot" and classes[9]["name"] == "Ankle boot"

    prompts = [json.loads(line) for line in (run / "prompts.jsonl").read_text().splitlines()]
    assert sum(len(p["image_seeds"]) for p in prompts) == 100  # 10 images per class
    # one template for the two naive prompts: one prompt with both images, no text twice
    assert all(len(p["image_seeds"]) >= 2 for p in prompts if p["strategy"] == "naive")
    assert len({(p["class_index"], p["text"]) for p in prompts}) == len(prompts)
    assert len({s for p in prompts for s in p["image_seeds"]}) == 100  # a distinct seed per image
    assert all(classes[p["class_index"]]["name"] in p["text"] for p in prompts)

    tars = sorted((run / "shards").glob("*.tar"))
    assert [t.name for t in tars] == [f"{i:06d}.tar" for i in range(5)]
    for tar in tars:
        stats = json.loads(tar.with_suffix(".json").read_text())
        assert stats["count"] == 20
        with tarfile.open(tar) as handle:
            names = handle.getnames()
        assert len(names) == 40 and all(n.endswith((".jpg", ".json")) for n in names)

    manifest = pq.read_table(run / "manifest.parquet").to_pylist()
    assert len(manifest) == 100 and len({r["key"] for r in manifest}) == 100
    assert {r["class_index"] for r in manifest} == set(range(10))
    assert all(-1.0 <= r["clip_prompt"] <= 1.0 for r in manifest)

    assert (run / "train" / "model.safetensors").is_file()
    evaluation = json.loads((run / "eval.json").read_text())
    top1 = evaluation["sets"]["fashion-mnist/test"]["top1"]
    assert evaluation["sets"]["fashion-mnist/test"]["images"] == 512
    assert top1 > 30.0  # ten classes: chance is 10%; one epoch on 1,024 real images learns

    html = (run / "report" / "index.html").read_text()
    assert "Ankle boot" in html and "T-shirt/top" in html and str(top1) in html
    thumbs = list((run / "report" / "thumbs").rglob("*.jpg"))
    assert len(thumbs) == 100  # all 10 of each class (a page shows up to 16)
    pages = "".join(p.read_text() for p in (run / "report" / "classes").glob("*.html"))
    assert all(f'src="../thumbs/{t.parent.name}/{t.name}"' in pages for t in thumbs)


@pytest.mark.slow
def test_rerun_does_no_work(run_copy: Path, kit_overrides: list[str]) -> None:
    before = {p: p.stat().st_mtime_ns for p in run_copy.rglob("*") if p.is_file()}
    start = time.perf_counter()
    result = cli("run", str(OFFLINE_CONFIG), "--out", str(run_copy), *set_args(kit_overrides))
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert _outcomes(result.stderr) == {stage: "skipped" for stage in STAGES}
    assert seconds < 30
    assert {p: p.stat().st_mtime_ns for p in run_copy.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_deleted_shard_is_regenerated_pixel_identical(
    run_copy: Path, kit_overrides: list[str]
) -> None:
    shards = run_copy / "shards"
    original = _pixels(shards / "000002.tar")
    tar_bytes = (shards / "000002.tar").read_bytes()
    manifest = (run_copy / "manifest.parquet").read_bytes()
    others = {p.name: p.stat().st_mtime_ns for p in shards.glob("*.tar") if p.name != "000002.tar"}
    (shards / "000002.tar").unlink()
    (shards / "000002.json").unlink()

    result = cli("run", str(OFFLINE_CONFIG), "--out", str(run_copy), *set_args(kit_overrides))
    assert result.returncode == 0, result.stderr
    assert "4 of 5 shards already done" in result.stderr
    assert (
        json.loads((run_copy / ".state" / "generate.json").read_text())["summary"][
            "shards_generated"
        ]
        == 1
    )
    regenerated = _pixels(shards / "000002.tar")
    assert regenerated.keys() == original.keys()
    # exact within one kernel set: the shard is made whole again, with the same batches, on
    # the same number of threads (generate.cpu_threads) as the first time
    assert all(np.array_equal(regenerated[k], original[k]) for k in original)
    assert (shards / "000002.tar").read_bytes() == tar_bytes
    assert (run_copy / "manifest.parquet").read_bytes() == manifest
    assert {
        p.name: p.stat().st_mtime_ns for p in shards.glob("*.tar") if p.name != "000002.tar"
    } == others
    # same outputs: nothing after generate needs to run again
    outcomes = _outcomes(result.stderr)
    assert outcomes["generate"] == "ran"
    assert all(outcomes[s] == "skipped" for s in ("leaks", "train", "evaluate", "report"))


def test_changed_generate_settings_rerun_generate_and_later_only(
    run_copy: Path, kit_overrides: list[str]
) -> None:
    from diversynth.config import load_config
    from diversynth.pipeline import STAGES, fingerprint, run_stages
    from diversynth.run.rundir import RunDir

    old_manifest = (run_copy / "manifest.parquet").read_bytes()
    run = RunDir(run_copy)
    # in this process: the command line is tested elsewhere, and its imports cost seconds
    config = load_config(OFFLINE_CONFIG, [*kit_overrides, "generate.steps=3"])
    stages = ["classes", "prompts", "generate"]
    assert run_stages(config, run, stages) == {
        "classes": "skipped", "prompts": "skipped", "generate": "ran",
    }  # fmt: skip
    assert (run_copy / "manifest.parquet").read_bytes() != old_manifest
    assert "steps: 3" in (run_copy / "config.yaml").read_text()
    # new images: the stages that read them are out of date now (evaluate follows once train
    # has new weights; test_force_reruns_stage_and_later runs the whole chain)
    for stage in STAGES:
        state = run.read_state(stage.name)
        assert (fingerprint(stage, config, run) != state.fingerprint) == (
            stage.name in ("leaks", "train", "report")
        ), stage.name


@pytest.mark.slow
def test_renamed_class_remakes_only_the_shards_holding_it(
    kit_overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new name for one class changes its prompts only: the shards holding them are made
    again and the others keep their files untouched (the same settings and prompts make the
    same bytes: test_deleted_shard_is_regenerated_pixel_identical). A forced regeneration
    stopped while it discards shards is finished by the next plain run. A shard committed
    for the old names after the change (by a worker that outlived its killed run) is found
    by the digest in its stats file and made again."""
    import diversynth.stages.generate.stage as generate_stage
    from diversynth.config import load_config
    from diversynth.pipeline import run_stages
    from diversynth.run.artifacts.shard_plan import ShardSpec
    from diversynth.run.artifacts.shards import remove_shard
    from diversynth.run.rundir import RunDir, read_jsonl

    run = RunDir(tmp_path / "run")
    # 20 prompts from templates (no LLM) in 5 shards
    small = [*kit_overrides, "prompts.per_class=2", "prompts.shares={naive: 1}",
             "generate.images_per_shard=4"]  # fmt: skip
    config = load_config(OFFLINE_CONFIG, small)
    stages = ["classes", "prompts", "generate"]
    run_stages(config, run, stages)
    old_files = {p.name: p.read_bytes() for p in run.shards.glob("0*.*")}
    names = [*config.classes.names[:-1], "ankle-high boot"]
    config = load_config(OFFLINE_CONFIG, [*small, f"classes.names={json.dumps(names)}"])
    old_prompts = read_jsonl(run.prompts)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in run.shards.glob("*.tar")}
    assert set(run_stages(config, run, stages).values()) == {"ran"}

    new_prompts = read_jsonl(run.prompts)
    changed = [new for old, new in zip(old_prompts, new_prompts, strict=True) if old != new]
    assert changed and {p["class_index"] for p in changed} == {9}  # the renamed class only
    plan = [ShardSpec(**s) for s in json.loads((run.shards / "plan.json").read_text())["shards"]]
    holding = {f"{s.name}.tar" for s in plan if s.take(old_prompts) != s.take(new_prompts)}
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in run.shards.glob("*.tar")}
    remade = {name for name in before if after[name] != before[name]}
    assert remade == holding and 0 < len(remade) < len(before)
    assert run.read_state("generate").summary["shards_generated"] == len(holding)

    def stop_after_one(folder: Path, name: str) -> None:
        monkeypatch.setattr(generate_stage, "remove_shard", _raise)
        remove_shard(folder, name)

    monkeypatch.setattr(generate_stage, "remove_shard", stop_after_one)
    with pytest.raises(RuntimeError, match="stopped"):
        run_stages(config, run, ["generate"], force=["generate"])
    monkeypatch.undo()
    assert len(list(run.shards.glob("*.tar"))) == len(before) - 1
    assert run_stages(config, run, stages)["generate"] == "ran"
    again = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in run.shards.glob("*.tar")}
    assert all(again[name] != after[name] for name in after)  # every shard made anew

    # a late worker of the first run commits one of its shards; the next run (which finds no
    # manifest: the discard removed it) must not keep it
    tar = sorted(holding)[0]
    made_now = (run.shards / tar).read_bytes()
    assert old_files[tar] != made_now
    for name in (tar, tar.replace(".tar", ".json")):
        (run.shards / name).write_bytes(old_files[name])
    run.manifest.unlink()
    assert run_stages(config, run, ["generate"])["generate"] == "ran"
    assert (run.shards / tar).read_bytes() == made_now
    assert run.read_state("generate").summary["shards_generated"] == 1


def _raise(*args: object) -> None:
    raise RuntimeError("stopped")


@pytest.mark.slow
def test_stage_needs_earlier_stages(tmp_path: Path, kit_overrides: list[str]) -> None:
    result = cli(
        "run", str(OFFLINE_CONFIG), "--out", str(tmp_path / "r"), "--stages", "train",
        *set_args(kit_overrides),
    )  # fmt: skip
    assert result.returncode == 1
    assert "needs 'classes'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_force_reruns_stage_and_later(run_copy: Path, kit_overrides: list[str]) -> None:
    result = cli(
        "run", str(OFFLINE_CONFIG), "--out", str(run_copy),
        "--stages", "classes,prompts,evaluate,report", "--force", "evaluate",
        *set_args(kit_overrides),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert _outcomes(result.stderr) == {
        "classes": "skipped", "prompts": "skipped", "evaluate": "ran", "report": "ran",
    }  # fmt: skip


@pytest.mark.slow
def test_stage_command_runs_one_stage(run_copy: Path, kit_overrides: list[str]) -> None:
    before = (run_copy / "classes.jsonl").read_bytes()
    (run_copy / "classes.jsonl").unlink()
    result = cli("classes", "run", str(OFFLINE_CONFIG), "--out", str(run_copy),
                 *set_args(kit_overrides))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert _outcomes(result.stderr) == {"classes": "ran"}
    assert (run_copy / "classes.jsonl").read_bytes() == before


@pytest.mark.slow
def test_one_process_per_run_directory(run_copy: Path, kit_overrides: list[str]) -> None:
    import fcntl

    with (run_copy / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = cli("run", str(OFFLINE_CONFIG), "--out", str(run_copy), *set_args(kit_overrides))
    assert result.returncode == 1
    assert "another diversynth process is working in" in result.stderr


@pytest.mark.slow
def test_status_lists_finished_stages(finished_run: Path) -> None:
    result = cli("status", "--run", str(finished_run))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) <= 30, result.stderr  # one screen: a row a stage, the figures brief
    for stage in STAGES:
        (row,) = [line for line in lines if line.startswith(f"│ {stage} ")]
        assert " done " in row and re.search(
            r"\d{4}-\d\d-\d\d \d\d:\d\d \((just now|\d+ \w+ ago)\)", row
        )
    assert "not run" not in result.stderr
    assert re.search(r"│ generate .*images 100", result.stderr), result.stderr


@pytest.mark.slow
def test_folder_that_is_not_a_pipeline_is_one_clear_error(
    run_copy: Path, kit_overrides: list[str], tmp_path: Path
) -> None:
    broken = tmp_path / "not-a-model"
    broken.mkdir()
    (broken / "README.txt").write_text("no model here")
    result = cli(
        "run", str(OFFLINE_CONFIG), "--out", str(run_copy),
        *set_args([*kit_overrides, f"generate.model={broken}"]),
    )  # fmt: skip
    assert result.returncode == 2  # found before any stage runs
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: generate.model: '{broken}' has no model_index.json: not a diffusers "
        "pipeline folder (save one with pipeline.save_pretrained)"
    ]
    assert "Traceback" not in result.stderr
    # the shards of the earlier settings are discarded only once a new model has loaded
    assert len(list((run_copy / "shards").glob("*.tar"))) == 5


def test_progress_speaks_every_few_seconds_where_output_is_a_file() -> None:
    """Piped to a file (nohup, a Slurm log) rich draws a bar only when it ends; a plain line
    a task comes every `every` seconds meanwhile."""
    from rich.console import Console

    from diversynth.run import progress

    log = io.StringIO()
    quiet = Console(file=log, force_terminal=False, width=200)
    bars = progress.progress_bar(every=0.2)
    bars.live.console = quiet  # what `console` is when stderr goes to a file
    with bars:
        task = bars.add_task("generate", total=40, unit="images")
        for _ in range(4):
            bars.advance(task, 5)
            time.sleep(0.25)
    lines = [line for line in log.getvalue().splitlines() if line.startswith("generate: ")]
    assert len(lines) >= 2, log.getvalue()
    assert re.fullmatch(r"generate: \d+/40 \(\d+%\) images(, [\d.]+ images/s)?(, ETA \d+:\d\d)?",
                        lines[0]), lines[0]  # fmt: skip


def test_a_log_file_gets_whole_table_rows() -> None:
    """Output to a file or a pipe is not cut at rich's 80 columns (the evaluation table has
    nine); a COLUMNS the user set still wins."""
    import os
    import subprocess
    import sys

    probe = ["-c", "from diversynth.run.progress import console; print(console.width)"]
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    piped = subprocess.run([sys.executable, *probe], capture_output=True, text=True, env=env)
    assert int(piped.stdout) >= 160, piped.stderr
    narrow = subprocess.run([sys.executable, *probe], capture_output=True, text=True,
                            env={**env, "COLUMNS": "90"})  # fmt: skip
    assert int(narrow.stdout) == 90, narrow.stderr


# Each stage's fingerprint (its config sections and outside inputs, upstream outputs left
# out) for configs/offline.yaml with the overrides below (no path that depends on where the
# repository or its venv lies: those resolve to absolute paths), as the code before the stages
# became folders (commit 14577ea, stage versions unchanged since) computed them. A run
# directory's state records these: a change here makes every user's finished stages run
# again. Bump a stage's version on purpose, and update the table then.
_PORTABLE = ["generate.model=stable-diffusion-v1-5/stable-diffusion-v1-5",
             "clip.model=ViT-B-32", "clip.pretrained=openai", "llm.backend=openai",
             "llm.model=smollm2", "llm.base_url=http://127.0.0.1:9/v1",
             "prompts.embedder=sentence-transformers/all-MiniLM-L6-v2"]  # fmt: skip
_FINGERPRINTS_BEFORE = {
    (): {
        "classes": "2add56b639e16622adcc47a1bd6def8f8495829b9c1f3515b71cb352a0b53aed",
        "prompts": "8281442536dbc60d8ef2fccdf9fa442d88d899ed96df4f90ac34cf8439252b80",
        "generate": "ff4726db51c3a629aff318dc0286d9864e3f83477592ce27b186795e29d87761",
        "leaks": "44e8a48db6b3f986401a948c9c4e7b37615c5af942222eff71e6283430673017",
        "train": "918c2c05ef136fa4f356112109feb0a79130c61affde9af8d14541298c7fd966",
        "evaluate": "22fb87ab505df814f6b53f367e5cb4ccb524085b6cbe30009c4e36ad71388c3b",
        "report": "c1cf838f94f472cd9d0b4a27a5a6366d7c83ca6f248926e3a986ab350ad10661",
    },
    # then train.aux_bn=false
    ("train.aux_norm=off",): {
        "train": "2c6ea384aa6c9c523564cb5fa5fc904aa5b0d67199a8ec32ac9d09b6469fbb90",
        "evaluate": "6404d61377da1ace255981399c8cf29ab8e5fc21240f9d0418c796572ac1e04e",
    },
    # then train.aux_bn=true with train.aux_norm=layernorm
    ("train.aux_norm=layernorm", "train.model=vit_tiny_patch16_224"): {
        "train": "cc955e20fe79f307572e3ca8f87fa1acd1299009a86b536b429a08a721b2f7a2",
        "evaluate": "b8b84a8e0940e55f649306fa4ae83cc7000397617e2849f8124f83f021d48474",
    },
}


@pytest.mark.parametrize("overrides", list(_FINGERPRINTS_BEFORE))
def test_run_directories_made_by_earlier_versions_keep_their_fingerprints(
    overrides: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So an old run resumes rather than starting over. Outside inputs enter as their
    references (their file signatures differ from machine to machine)."""
    from diversynth import pipeline
    from diversynth.config import fingerprinted, load_config
    from diversynth.run.rundir import RunDir

    monkeypatch.setattr(pipeline, "_external", str)
    config = load_config(OFFLINE_CONFIG, [*_PORTABLE, *overrides])
    hashed = json.dumps(fingerprinted(config))
    assert str(REPO) not in hashed and sys.prefix not in hashed  # the same on any machine
    run = RunDir(tmp_path)
    now = {s.name: pipeline.fingerprint(s, config, run, upstream=False) for s in pipeline.STAGES}
    expected = _FINGERPRINTS_BEFORE[overrides]
    assert {name: now[name] for name in expected} == expected

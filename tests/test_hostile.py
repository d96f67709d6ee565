"""Bad input and damaged runs: one line naming what and where, exit 2 for a mistake and 1
for a fault, no traceback, and nothing of the user's changed. Each test is a row of the
README's "What happens when..." table."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import OFFLINE_CONFIG, cli, set_args, tree_snapshot
from safetensors.torch import load_file

from diversynth.assets import resolve_bundled
from diversynth.rundir import RunDir
from diversynth.safe_weights import UnsafeWeightsError, refusing_pickles


def one_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The one `error:` line of a failed command (exit `code`, no traceback)."""
    assert result.returncode == code, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    return errors[0]


def _user_project(tmp_path: Path) -> Path:
    project = tmp_path / "proj"
    project.mkdir()
    text = "# my experiment: keep these notes\n" + OFFLINE_CONFIG.read_text()
    (project / "config.yaml").write_text(text)
    (project / "prompts.jsonl").write_text('{"my": "own prompts"}\n')
    return project


@pytest.mark.slow
def test_a_folder_that_is_not_a_run_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    project = _user_project(tmp_path)
    before = {p.name: p.read_bytes() for p in project.iterdir()}
    config = str(project / "config.yaml")
    line = one_error(cli("run", config, "--out", str(project)), 2)
    assert "holds files that are not a diversynth run" in line and "config.yaml" in line
    assert {p.name: p.read_bytes() for p in project.iterdir()} == before  # nothing added
    line = one_error(cli("run", config, "--out", ""), 2)
    assert "--out: give a folder" in line
    line = one_error(cli("report", "--run", str(project)), 2)
    assert "is not a diversynth run directory" in line
    assert {p.name: p.read_bytes() for p in project.iterdir()} == before


def _with_pickled_weights(source: Path, target: Path, weights: str, pickle_name: str) -> Path:
    """A copy of a model folder whose safetensors weights file became a pickle."""
    shutil.copytree(source, target)
    state = load_file(str(target / weights))
    (target / weights).unlink()
    torch.save(state, target / Path(weights).parent / pickle_name)
    return target


@pytest.fixture
def pickled(kit: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    return {
        "clip": _with_pickled_weights(kit["open-clip"], tmp_path / "clip",
                                      "open_clip_model.safetensors", "open_clip_model.bin"),
        "embedder": _with_pickled_weights(resolve_bundled("bundled:minilm"), tmp_path / "minilm",
                                          "model.safetensors", "pytorch_model.bin"),
        "sd": _with_pickled_weights(kit["stable-diffusion"], tmp_path / "sd",
                                    "unet/diffusion_pytorch_model.safetensors",
                                    "diffusion_pytorch_model.bin"),
    }  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("setting", "value", "pickle_file"),
    [
        ("clip.model", "local-dir:{clip}", "open_clip_model.bin"),
        ("prompts.embedder", "{embedder}", "pytorch_model.bin"),
        ("generate.model", "{sd}", "unet/diffusion_pytorch_model.bin"),
        ("llm.model", "{embedder}", "pytorch_model.bin"),  # a transformers folder
    ],
)
def test_pickled_weights_are_refused_before_anything_loads(
    pickled: dict[str, Path], kit_overrides: list[str], tmp_path: Path,
    setting: str, value: str, pickle_file: str,
) -> None:  # fmt: skip
    overrides = [*kit_overrides, f"{setting}={value.format(**pickled)}"]
    if setting == "llm.model":
        overrides.append("llm.backend=transformers")
    out = tmp_path / "run"
    line = one_error(cli("run", str(OFFLINE_CONFIG), "--out", str(out), *set_args(overrides)), 2)
    assert line.startswith(f"error: {setting}:") and pickle_file in line and "pickle" in line
    assert not out.exists()


def test_a_library_reaching_for_a_pickle_is_stopped(pickled: dict[str, Path]) -> None:
    """The guard around every model load: open_clip's own loader falls back to a `.bin`
    in a local-dir folder, and is refused before it unpickles."""
    import open_clip

    with pytest.raises(UnsafeWeightsError, match=r"clip.model: .*open_clip_model.bin"):
        with refusing_pickles("clip.model"):
            open_clip.create_model_and_transforms(f"local-dir:{pickled['clip']}")
    assert torch.load is torch.serialization.load  # put back after the block


@pytest.mark.slow
def test_a_pickled_checkpoint_for_evaluate_model_is_one_line(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pth"
    torch.save({"weight": torch.zeros(2)}, checkpoint)
    line = one_error(cli("evaluate-model", str(OFFLINE_CONFIG), "--checkpoint", str(checkpoint)), 2)
    assert "model.pth" in line and "not a readable safetensors file" in line


SETTINGS_REFUSED = [
    ("train.model=resnet9999", "train.model: not a timm model name (got 'resnet9999')"),
    ('prompts.templates=["a {place} with a {name}"]', "unknown field {place}"),
    ('prompts.templates=["a { {name}"]', "not a template"),
    ("train.lr=.inf", "train.lr: Input should be a finite number"),
    ("generate.scheduler=NoSuchScheduler", "generate.scheduler: no diffusers scheduler"),
    ("train.batch_size=1000000", "more than the 6000 real training images"),
    ("generate.steps=[3", "--set 'generate.steps=[3': the value is not YAML"),
]


@pytest.mark.slow
def test_settings_are_checked_before_any_stage_runs(
    kit_overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each refused setting is one `error:` line (exit 2, no traceback) before the run
    directory exists. The command runs in this process (typer's runner: one import of
    everything for all of them), the first also as the real command in a child process."""
    from typer.testing import CliRunner

    from diversynth.cli import app

    monkeypatch.setenv("COLUMNS", "200")
    overrides = [o for o in kit_overrides if not o.startswith("data.train_limit")]
    for k, (override, expected) in enumerate(SETTINGS_REFUSED):
        out = tmp_path / f"run{k}"
        args = ["run", str(OFFLINE_CONFIG), "--out", str(out), *set_args([*overrides, override])]
        if k == 0:
            line = one_error(cli(*args), 2)
        else:
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 2, (override, result.output)
            assert isinstance(result.exception, SystemExit)  # the command's exit, no crash
            assert "Traceback" not in result.output
            errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
            assert len(errors) == 1, (override, result.output)
            line = errors[0]
        assert expected in line, (override, line)
        assert not out.exists()  # refused before the run directory was made


def test_a_class_file_that_does_not_parse_names_the_file_and_position(tmp_path: Path) -> None:
    from diversynth.classes.catalog import load_classes
    from diversynth.classes.entry import ClassListError
    from diversynth.config import ClassesConfig

    bad = tmp_path / "classes.json"
    bad.write_text('["cat", "dog",\n "bird"')
    with pytest.raises(ClassListError, match=r"classes.json is not valid json: .*line 2"):
        load_classes(ClassesConfig(file=bad))


@pytest.mark.slow
def test_damaged_run_files_are_found_named_and_made_again(
    run_copy: Path, kit_overrides: list[str]
) -> None:
    from diversynth.config import load_config
    from diversynth.pipeline import run_stages

    classes = (run_copy / "classes.jsonl").read_bytes()
    shard = run_copy / "shards" / "000001.tar"
    tar_bytes = shard.read_bytes()
    with shard.open("r+b") as handle:  # a copy cut short
        handle.truncate(len(tar_bytes) // 2)
    manifest = run_copy / "manifest.parquet"
    garbled = bytearray(manifest.read_bytes())
    garbled[100:140] = b"\x00" * 40  # same size, other bytes
    manifest.write_bytes(bytes(garbled))
    lines = classes.decode().splitlines(keepends=True)
    (run_copy / "classes.jsonl").write_text("".join(lines[:-1]) + lines[-1][:20])

    verify = cli("verify", "--run", str(run_copy))
    assert verify.returncode == 1 and "Traceback" not in verify.stderr
    named = [line for line in verify.stderr.splitlines() if line.startswith("damaged:")]
    assert len(named) == 3, verify.stderr
    assert any("classes.jsonl" in line for line in named)
    assert any("shards/000001.tar" in line for line in named)
    assert any("manifest.parquet" in line for line in named)

    config = load_config(OFFLINE_CONFIG, kit_overrides)
    outcome = run_stages(config, RunDir(run_copy))
    assert outcome["classes"] == "ran" and outcome["generate"] == "ran"
    assert outcome["prompts"] == "skipped" and outcome["train"] == "skipped"  # same bytes again
    assert (run_copy / "classes.jsonl").read_bytes() == classes
    assert shard.read_bytes() == tar_bytes
    assert cli("verify", "--run", str(run_copy)).returncode == 0


@pytest.mark.slow
def test_reading_a_damaged_file_outside_the_pipeline_is_one_line(run_copy: Path) -> None:
    (run_copy / "manifest.parquet").write_bytes(b"not parquet")
    line = one_error(cli("report", "--run", str(run_copy)), 1)
    assert "manifest.parquet: not a readable manifest" in line and "diversynth verify" in line


def test_too_many_synthetic_images_a_step_is_refused(
    run_copy: Path, kit_overrides: list[str]
) -> None:
    from diversynth.config import load_config
    from diversynth.pipeline import run_stages
    from diversynth.train.loop import TrainError

    # 100 synthetic images in the finished run; half of a 512-image batch is more
    config = load_config(OFFLINE_CONFIG, [*kit_overrides, "train.batch_size=512",
                                          "train.synthetic_fraction=0.5"])  # fmt: skip
    with pytest.raises(TrainError, match="256 synthetic ones, more than the 100 synthetic"):
        run_stages(config, RunDir(run_copy), stages=["train"])


@pytest.mark.slow
def test_a_report_while_another_process_works_in_the_run_is_refused(run_copy: Path) -> None:
    before = tree_snapshot(run_copy / "report")
    with RunDir(run_copy).lock():
        line = one_error(cli("report", "--run", str(run_copy)), 1)
    assert "another diversynth process is working in" in line
    assert tree_snapshot(run_copy / "report") == before


def test_a_full_disk_while_writing_the_report_is_one_line(
    run_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from typer.testing import CliRunner

    from diversynth.cli import app
    from diversynth.report import site

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(run_copy / "report"))

    monkeypatch.setattr(site, "build_run_site", full)
    result = CliRunner().invoke(app, ["report", "--run", str(run_copy)])
    assert result.exit_code == 1
    assert "report: cannot write the site: No space left on device" in result.output
    assert "Traceback" not in result.output


def test_a_plan_that_cannot_fit_the_disk_is_refused_before_any_image(
    finished_run: Path, tmp_path: Path, kit_overrides: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The free space is checked against the plan before any image is made: on a test
    image at first, then on the shards already made."""
    from conftest import copy_before_generate

    from diversynth.config import load_config
    from diversynth.generate import stage
    from diversynth.pipeline import run_stages

    run = copy_before_generate(finished_run, tmp_path / "run")
    config = load_config(OFFLINE_CONFIG, kit_overrides)
    per_image, how = stage.bytes_per_image(config, RunDir(run), [])
    assert how == "estimated on a test image" and 2_000 < per_image < 10_000  # 64 px images

    def free(bytes_free: int):
        return lambda path: shutil._ntuple_diskusage(10**12, 10**12 - bytes_free, bytes_free)

    monkeypatch.setattr(stage.shutil, "disk_usage", free(100_000))
    with pytest.raises(stage.GenerateError, match=r"generate: 100 images to make need about "
                       r"\d+\.\d KB \(\d\.\d KB an image, estimated on a test image\); the "
                       r"disk of .* has 100\.0 KB free"):  # fmt: skip
        run_stages(config, RunDir(run), stages=["generate"])
    assert not list((run / "shards").glob("*.tar"))
    # the first two shards made: what is left is measured on them
    monkeypatch.setattr(stage.shutil, "disk_usage", free(10**12))
    run_stages(config, RunDir(run), stages=["generate"], options={"max_shards": 2})
    done = stage.planned_shards(config, RunDir(run))[:2]
    measured, how = stage.bytes_per_image(config, RunDir(run), done)
    on_disk = sum((run / "shards" / f"{s.name}.{e}").stat().st_size for s in done
                  for e in ("tar", "json", "rows.parquet"))  # fmt: skip
    made = sum(s.images for s in done)
    assert how == "measured on 2 finished shard(s)" and measured == on_disk / made
    monkeypatch.setattr(stage.shutil, "disk_usage", free(int(measured * (100 - made - 5))))
    with pytest.raises(stage.GenerateError, match=rf"{100 - made} images to make .* measured on 2"):
        run_stages(config, RunDir(run), stages=["generate"])

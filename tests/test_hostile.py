"""Bad input and damaged runs: one line naming what and where, exit 2 for a mistake and 1
for a fault, no traceback, and nothing of the user's changed. Each test is a row of the
"What happens when..." list of docs/troubleshooting.md."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import OFFLINE_CONFIG, cli, invoke, one_line, set_args, tree_snapshot
from safetensors.torch import load_file

from diversynth.models.assets import resolve_bundled
from diversynth.models.safe_weights import UnsafeWeightsError, refusing_pickles
from diversynth.run.rundir import RunDir


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
    ("generate.steps=[3", "--set 'generate.steps=[3': not valid YAML"),
]


@pytest.mark.slow
def test_settings_are_checked_before_any_stage_runs(
    kit_overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each refused setting is one `error:` line (exit 2, no traceback) before the run
    directory exists. The command runs in this process (typer's runner: one import of
    everything for all of them), the first also as the real command in a child process."""
    from typer.testing import CliRunner

    from diversynth.commands.cli import app

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
    from diversynth.config import ClassesConfig
    from diversynth.data.classes.catalog import load_classes
    from diversynth.data.classes.entry import ClassListError

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

    # what a worker lost with its node leaves: reported, not counted as damage
    orphan = run_copy / "shards" / "000002.tar.0123456789ab.tmp"
    orphan.write_bytes(b"")

    verify = cli("verify", "--run", str(run_copy))
    assert verify.returncode == 1 and "Traceback" not in verify.stderr
    named = [line for line in verify.stderr.splitlines() if line.startswith("damaged:")]
    assert len(named) == 3, verify.stderr
    assert f"{orphan}: left by an interrupted worker" in verify.stderr
    assert any("classes.jsonl" in line for line in named)
    assert any("shards/000001.tar" in line for line in named)
    assert any("manifest.parquet" in line for line in named)

    config = load_config(OFFLINE_CONFIG, kit_overrides)
    outcome = run_stages(config, RunDir(run_copy))
    assert outcome["classes"] == "ran" and outcome["generate"] == "ran"
    assert outcome["prompts"] == "skipped" and outcome["train"] == "skipped"  # same bytes again
    assert (run_copy / "classes.jsonl").read_bytes() == classes
    assert shard.read_bytes() == tar_bytes
    assert not orphan.exists()  # removed by the run
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
    from diversynth.stages.train.loop import TrainError

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

    from diversynth.commands.cli import app
    from diversynth.stages.report import site

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
    from diversynth.pipeline import run_stages
    from diversynth.stages.generate import stage

    run = copy_before_generate(finished_run, tmp_path / "run")
    config = load_config(OFFLINE_CONFIG, kit_overrides)
    per_image, how = stage.bytes_per_image(config, RunDir(run), [])
    assert how == "estimated on a test image" and 2_000 < per_image < 10_000  # 64 px images

    def free(bytes_free: int):
        return lambda path: shutil._ntuple_diskusage(10**12, 10**12 - bytes_free, bytes_free)

    monkeypatch.setattr(stage.shutil, "disk_usage", free(100_000))
    with pytest.raises(stage.GenerateError, match=r"generate: 100 images to make need about "
                       r"\d+\.\d KB \(\d\.\d KB an image and \d+\.\d KB a shard, estimated "
                       r"on a test image\); the disk of .* has 100\.0 KB free"):  # fmt: skip
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


# --------------------------------------------------------------------------- round two


def _planted(folder: Path, files: dict[str, str]) -> dict[str, bytes]:
    """User files written under `folder`; their bytes, to compare after."""
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return {name: (folder / name).read_bytes() for name in files}


def _unchanged(folder: Path, planted: dict[str, bytes]) -> bool:
    return all((folder / name).read_bytes() == data for name, data in planted.items())


USER_FILES = {"backup.tar": "my only copy\n", "catalog.json": '{"mine": true}\n'}


def test_a_run_folder_that_links_out_of_the_run_is_refused_and_the_target_untouched(
    kit_overrides: list[str], tmp_path: Path
) -> None:
    """RUN/shards as a link to a folder of the user's: the run would write there and
    remove what it did not plan. Refused before any stage, naming the link."""
    user = tmp_path / "data"
    user.mkdir()
    planted = _planted(user, USER_FILES)
    out = tmp_path / "run"
    RunDir(out).claim()
    (out / "shards").symlink_to(user)
    args = ["run", str(OFFLINE_CONFIG), "--out", str(out), *set_args(kit_overrides)]
    line = one_line(2, *args, "--stages", "generate")
    assert "shards' is a symbolic link to" in line and "outside the run directory" in line
    assert _unchanged(user, planted)
    assert sorted(p.name for p in user.iterdir()) == sorted(USER_FILES)
    assert not (out / "config.yaml").exists()  # nothing of the run written either
    # a link that stays inside the run is the user's business
    (out / "shards").unlink()
    (out / "elsewhere").mkdir()
    (out / "shards").symlink_to(out / "elsewhere")
    RunDir(out).check_confined()


def test_writing_where_the_user_named_a_file_that_exists_needs_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """import-weights and evaluate-model --json never replace a file that is there (a
    config named by mistake became a 19 MB checkpoint) unless --force."""
    planted = _planted(tmp_path, {"existing.yaml": "name: keep me\n", "eval.json": "{}\n",
                                  "model.safetensors": "not yet\n"})  # fmt: skip
    line = one_line(2, "import-weights", "efficientnet-lite0", str(tmp_path / "existing.yaml"))
    assert "existing.yaml' does not end in .safetensors" in line
    line = one_line(2, "import-weights", "efficientnet-lite0", str(tmp_path / "model.safetensors"))
    assert "model.safetensors' exists; give a new file, or --force to replace it" in line
    line = one_line(2, "import-weights", "efficientnet-lite0", str(tmp_path))
    assert "is a folder" in line
    line = one_line(2, "evaluate-model", str(OFFLINE_CONFIG), "--model", "resnet18",
                    "--json", str(tmp_path / "eval.json"))  # fmt: skip
    assert "eval.json' exists" in line
    assert _unchanged(tmp_path, planted)
    # --force replaces it, through the importer's own writer
    from diversynth.stages.train import import_weights

    made = []
    monkeypatch.setitem(import_weights.IMPORTERS, "efficientnet-lite0",
                        lambda out: made.append(out) or {"model": "m"})  # fmt: skip
    code, errors, _ = invoke("import-weights", "efficientnet-lite0",
                             str(tmp_path / "model.safetensors"), "--force")  # fmt: skip
    assert code == 0 and not errors and made == [tmp_path / "model.safetensors"]


def _bomb(depth: int, under: str) -> str:
    """A billion-laughs YAML: nine aliases of nine aliases ... of a nine-item list."""
    lines = ['b0: &b0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, depth + 1):
        lines.append(f"b{level}: &b{level} [" + ", ".join([f"*b{level - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\n{under}\n"


def test_yaml_alias_bombs_and_files_that_are_not_files_are_one_line_at_once(
    tmp_path: Path,
) -> None:
    """Each in well under a second: the YAML is measured before anything is built from it,
    and a file is read only when it is a regular file below its bound."""
    import os
    import time

    base = OFFLINE_CONFIG.read_text()
    cases = {
        "unknown key": _bomb(9, "x: *b9") + base,
        "class names": _bomb(9, "") + base.replace("classes:\n", "classes:\n  names: *b9\n", 1),
    }
    for what, text in cases.items():
        path = tmp_path / f"{what.replace(' ', '_')}.yaml"
        path.write_text(text)
        start = time.perf_counter()
        line = one_line(2, "plan", str(path))
        assert time.perf_counter() - start < 5, what
        assert "expands to more than 1,000,000 values" in line, (what, line)
    line = one_line(2, "plan", str(OFFLINE_CONFIG), "--set", "x=[&a [1, *a]]")
    assert "--set" in line and ("expands to more than" in line or "not valid YAML" in line)

    fifo = tmp_path / "classes.txt"
    os.mkfifo(fifo)  # no writer: opening it would wait for ever
    zero = tmp_path / "zero.txt"
    zero.symlink_to("/dev/zero")
    for path, kind in ((fifo, "a FIFO"), (zero, "a character device")):
        start = time.perf_counter()
        line = one_line(2, "plan", str(OFFLINE_CONFIG), "--set", f"classes.file={path}",
                        "--set", "classes.catalog=null")  # fmt: skip
        assert line.startswith("error: classes.file:") and kind in line, line
        line = one_line(2, "plan", str(path))
        assert line.startswith("error: config:") and kind in line, line
        assert time.perf_counter() - start < 5
    line = one_line(2, "plan", str(tmp_path))
    assert "is a folder, not a regular file" in line
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (9 << 20))
    assert "above the bound of 4 MB" in one_line(2, "plan", str(big))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("prompts.per_class=1000000000", "prompts.per_class: Input should be less than or equal"),
        (
            "prompts.per_class=5000000",
            "make 50,000,000 prompts, above the bound of 10,000,000 "
            "(the environment variable DIVERSYNTH_MAX_IMAGES raises it)",
        ),
        ("generate.height=40000", "generate.height: Input should be less than or equal to 4096"),
        ("seed=18446744073709551621", "seed: Input should be less than 9223372036854775808"),
        ("seed=-1", "seed: Input should be greater than or equal to 0"),
        ("llm.max_tokens=100000000", "llm.max_tokens: Input should be less than or equal"),
    ],
)
def test_sizes_counts_and_seeds_are_bounded_when_read(override: str, expected: str) -> None:
    """Refused by `plan` before it builds anything (it took 4 GB in 8 s for 10**9 prompts
    a class), with the bound in the line."""
    assert expected in one_line(2, "plan", str(OFFLINE_CONFIG), "--set", override)


def test_every_numeric_setting_has_an_upper_bound() -> None:
    """The rule behind the cases above: no int or float setting without a maximum."""
    import annotated_types
    from pydantic import BaseModel

    from diversynth import config

    unbounded = []

    def bounded(metadata: list[object]) -> bool:
        return any(isinstance(m, annotated_types.Le | annotated_types.Lt) for m in metadata)

    def visit(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            kinds = [field.annotation, *getattr(field.annotation, "__args__", ())]
            subs = [k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)]
            for sub in subs:
                visit(sub, f"{prefix}{name}.")
            numeric = [k for k in kinds if k in (int, float)]
            if numeric and not bounded(field.metadata):
                unbounded.append(prefix + name)

    visit(config.RunConfig, "")
    assert not unbounded


def test_a_long_class_name_is_refused_with_its_bound() -> None:
    from diversynth.config import ClassesConfig
    from diversynth.data.classes.catalog import load_classes
    from diversynth.data.classes.entry import ClassListError

    with pytest.raises(ClassListError, match=r"classes.names\[1\]: a class name of 5,000 "
                       r"characters, above the bound of 200") as err:  # fmt: skip
        load_classes(ClassesConfig(names=["cat", "x" * 5000]))
    assert len(str(err.value)) < 400


def test_messages_name_the_right_thing(tmp_path: Path) -> None:
    """--stages that names nothing, and a run name rich would take for markup."""
    line = one_line(2, "run", str(OFFLINE_CONFIG), "--out", str(tmp_path / "r"), "--stages", ",")
    assert "--stages: no stage named (got ',')" in line
    assert not (tmp_path / "r").exists()
    code, errors, output = invoke("plan", str(OFFLINE_CONFIG), "--set", 'name="[/oops] [b]x"')
    assert code == 0 and not errors and "plan: [/oops] [b]x" in output
    from diversynth.run.progress import console

    console.print("a class named [/oops]")  # printed as it stands, no MarkupError
    code, errors, output = invoke("report", "--run", str(tmp_path), "--port", "70000")
    assert code == 2 and "--port" in output and "65535" in output


def test_generate_keeps_files_no_plan_named_and_plans_the_disk_at_small_shards(
    finished_run: Path, kit_overrides: list[str], tmp_path: Path
) -> None:
    """Files in RUN/shards that no plan of the run named are left as they were (before,
    every *.tar and *.json not planned was removed); the disk estimate counts each
    shard's own bytes (it was about half the truth at 4 images a shard)."""
    from conftest import copy_before_generate

    from diversynth.config import load_config
    from diversynth.pipeline import run_stages
    from diversynth.stages.generate import stage

    run = copy_before_generate(finished_run, tmp_path / "run")
    (run / "shards").mkdir()
    planted = _planted(run / "shards", {**USER_FILES, "000777.tar": "not a shard\n"})
    config = load_config(OFFLINE_CONFIG, [*kit_overrides, "generate.images_per_shard=4"])
    todo = stage.planned_shards(config, RunDir(run))
    per_image, _ = stage.bytes_per_image(config, RunDir(run), [])
    estimate = sum(s.images for s in todo) * per_image + len(todo) * stage.SHARD_BYTES
    run_stages(config, RunDir(run), stages=["generate"])
    assert _unchanged(run / "shards", planted)
    on_disk = sum(p.stat().st_size for p in (run / "shards").iterdir()
                  if p.name[:6].isdigit() and p.name != "000777.tar")  # fmt: skip
    assert 0.8 < estimate / on_disk < 1.5, (estimate, on_disk)
    # a smaller plan removes the shards of the larger one, and still nothing of the user's
    smaller = load_config(OFFLINE_CONFIG, [*kit_overrides, "generate.images_per_shard=50"])
    run_stages(smaller, RunDir(run), stages=["generate"])
    assert sorted(p.name for p in (run / "shards").glob("*.tar")) == [
        "000000.tar", "000001.tar", "000777.tar", "backup.tar"]  # fmt: skip
    assert _unchanged(run / "shards", planted)


def test_a_report_goes_only_into_a_folder_of_reports_unless_forced(
    run_copy: Path, tmp_path: Path
) -> None:
    """A folder with an index.html of the user's was taken for a report and its pages
    overwritten; now only a folder a report was written to (its marker) is, and the serve
    port is checked."""
    import socket

    site = tmp_path / "site"
    site.mkdir()
    planted = _planted(site, {"index.html": "<h1>my page</h1>\n",
                              "classes/00000.html": "<p>mine</p>\n"})  # fmt: skip
    line = one_line(2, "report", "--run", str(run_copy), "--out", str(site))
    assert "holds files that are not a diversynth report (classes, index.html)" in line
    assert "--force" in line and _unchanged(site, planted)
    assert one_line(2, "report", "--run", str(run_copy), "--out", str(run_copy / "config.yaml"))
    code, errors, _ = invoke("report", "--run", str(run_copy), "--out", str(site), "--force")
    assert code == 0 and not errors and (site / ".diversynth-report").is_file()
    assert not _unchanged(site, planted)  # forced: replaced, as asked
    fresh = tmp_path / "fresh"
    assert invoke("report", "--run", str(run_copy), "--out", str(fresh))[0] == 0
    assert invoke("report", "--run", str(run_copy), "--out", str(fresh))[0] == 0  # its own
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        line = one_line(1, "report", "--run", str(run_copy), "--out", str(fresh), "--serve",
                        "--port", port)  # fmt: skip
    assert f"--port: cannot serve on 127.0.0.1:{port}: Address already in use" in line


def test_a_full_disk_mid_run_says_the_work_is_kept(
    run_copy: Path, kit_overrides: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from diversynth.stages.report import stage

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(run_copy / "report" / "x"))

    monkeypatch.setattr(stage, "build_run_site", full)
    line = one_line(1, "run", str(OFFLINE_CONFIG), "--out", str(run_copy),
                    *set_args(kit_overrides), "--force", "report")  # fmt: skip
    assert "the disk is full" in line and "report/x" in line and "run the same command" in line


def test_a_run_on_a_read_only_disk_is_reported_elsewhere(run_copy: Path, tmp_path: Path) -> None:
    """An archived run on a read-only mount: its lock file cannot be opened to write, which
    stopped every report; `--out` elsewhere now works, and writing beside it says where."""
    mount = tmp_path / "archive"
    mount.mkdir()
    made = subprocess.run(["mount", "--bind", "-o", "ro", str(run_copy), str(mount)],
                          capture_output=True)  # fmt: skip
    if made.returncode:  # a bind mount needs the privilege to mount; the checks need one
        pytest.skip(f"cannot make a read-only mount here: {made.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], check=True)
        code, errors, _ = invoke("report", "--run", str(mount), "--out", str(tmp_path / "site"))
        assert code == 0 and not errors and (tmp_path / "site" / "index.html").is_file()
        line = one_line(1, "report", "--run", str(mount))
        assert "Read-only file system" in line and "--out DIR writes it elsewhere" in line
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_tiny_pipeline_never_replaces_a_pipeline_folder_of_the_users(tmp_path: Path) -> None:
    """Every diffusers pipeline folder has a model_index.json, so that proved nothing: only
    a folder save_tiny_pipeline wrote (its marker) is replaced, and it builds in a folder
    of its own, never a fixed OUT.partial that could be the user's."""
    mine = tmp_path / "my-sdxl"
    planted = _planted(mine, {"model_index.json": '{"_class_name": "X"}\n',
                              "unet/weights.safetensors": "my weights\n"})  # fmt: skip
    beside = _planted(tmp_path, {"my-sdxl.partial/notes.txt": "keep\n"})
    line = one_line(2, "make-tiny-models", str(mine), "--arch", "sd15")
    assert "exists and is not a model kit" in line
    assert _unchanged(mine, planted) and _unchanged(tmp_path, beside)
    made = tmp_path / "tiny"
    assert invoke("make-tiny-models", str(made), "--arch", "sd15")[0] == 0
    assert invoke("make-tiny-models", str(made), "--arch", "sd15")[0] == 0  # its own: remade
    assert (made / "model_index.json").is_file() and _unchanged(tmp_path, beside)
    assert not list(tmp_path.glob(".*.partial"))


def test_what_cannot_run_here_is_one_line_before_any_stage(
    kit: dict[str, Path], kit_overrides: list[str], tmp_path: Path
) -> None:
    """A device the machine lacks, model_kwargs that build but cannot run a batch (the
    model is run on the meta device), a pipeline component that cannot be left out or a
    class its library lacks, a path under a file, a loop of links in the run: each one
    line, before anything is written."""
    import json

    import torch

    out = tmp_path / "run"
    base = ["run", str(OFFLINE_CONFIG), "--out", str(out), *set_args(kit_overrides)]
    if not torch.cuda.is_available():
        line = one_line(2, *base, "--set", "train.device=cuda:3")
        assert "train.device: cuda:3, but torch sees no CUDA device" in line
    line = one_line(2, *base, "--set", "train.model_kwargs={in_chans: 1}")
    assert "train.model_kwargs: resnet10t with {'in_chans': 1} fails on a 32 px RGB batch" in line
    line = one_line(2, *base, "--set", "train.model_kwargs={drop_rate: 5}")
    assert "dropout probability has to be between 0 and 1" in line
    line = one_line(2, *base, "--set", "generate.components={unet: null}")
    assert "StableDiffusionPipeline cannot run without its unet" in line
    sd = Path(shutil.copytree(kit["stable-diffusion"], tmp_path / "sd"))
    index = json.loads((sd / "model_index.json").read_text())
    (sd / "model_index.json").write_text(json.dumps({**index, "unet": ["diffusers", "NoUNet"]}))
    line = one_line(2, *base, "--set", f"generate.model={sd}")
    assert "model_index.json names unet a diffusers NoUNet, a class diffusers does not have" in line
    assert not out.exists()
    (tmp_path / "notes.txt").write_text("mine\n")
    under = tmp_path / "notes.txt" / "run"
    line = one_line(2, "run", str(OFFLINE_CONFIG), "--out", str(under))
    assert f"cannot make {str(under)!r}: {str(tmp_path / 'notes.txt')!r} is a file" in line
    line = one_line(2, "evaluate-model", str(OFFLINE_CONFIG), "--model", "resnet18", "--json",
                    str(tmp_path / "notes.txt" / "eval.json"))  # fmt: skip
    assert "is a file, not a folder" in line
    RunDir(out).claim()
    (out / "a").symlink_to(out / "b")
    (out / "b").symlink_to(out / "a")
    line = one_line(2, *base, "--stages", "classes")
    assert "is one of a loop of symbolic links" in line


def test_a_model_its_library_cannot_build_is_one_line(kit: dict[str, Path], tmp_path: Path) -> None:
    """A config value the library cannot take (a damaged config.json) fails inside
    diffusers with its own error class: the loader says which setting and model, in one
    line (it was a traceback)."""
    import json

    from diversynth.config import GenerateConfig
    from diversynth.models.generator import GeneratorLoadError, TextToImage

    sd = Path(shutil.copytree(kit["stable-diffusion"], tmp_path / "sd"))
    unet = json.loads((sd / "unet" / "config.json").read_text())
    (sd / "unet" / "config.json").write_text(json.dumps({**unet, "norm_num_groups": "x"}))
    with pytest.raises(GeneratorLoadError, match=rf"generate.model: cannot load '{sd}': \w+"):
        TextToImage.load(GenerateConfig(model=str(sd), device="cpu"))


def test_a_hub_that_does_not_answer_is_asked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no network each hub request was retried for about 25 s (a run with a hub
    model spent minutes before one line); one connection is tried, then the local cache
    alone answers: a missing model fails at once."""
    import time

    from huggingface_hub import constants

    from diversynth.models import hub
    from diversynth.models.pipeline_traits import PipelineTraitsError, read_traits

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # refuses at once
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    hub.hub_answers.cache_clear()
    start = time.perf_counter()
    assert hub.offline_unless_answering(["someone/some-pipeline"])
    with pytest.raises(PipelineTraitsError, match="generate.model: cannot read 'someone/some"):
        read_traits("someone/some-pipeline")
    assert time.perf_counter() - start < 5
    assert constants.HF_HUB_OFFLINE and not hub.offline_unless_answering(["other/model"])
    hub.hub_answers.cache_clear()


def test_files_of_the_users_inside_a_run_and_its_report_are_kept(
    run_copy: Path, kit_overrides: list[str], tmp_path: Path
) -> None:
    """A rerun removes only what a stage or a report build wrote: notes a user left in
    the run's folders, a report forced into a site of theirs, and a file a hand-edited
    stage record names outside the run all stay; --out cannot be a run's own folder."""
    import json

    names = ["train/tensorboard/mine.txt", "leaks/eval-999.jpg", "report/classes/mine.html",
             "report/thumbs/m.jpg", "report/leaks/m.jpg", "shards/notes.txt"]  # fmt: skip
    planted = _planted(run_copy, dict.fromkeys(names, "mine\n"))
    victim = tmp_path / "victim.txt"
    victim.write_text("outside the run\n")
    state_file = run_copy / ".state" / "prompts.json"
    state = json.loads(state_file.read_text())
    state["files"]["../victim.txt"] = [1, 0, None]  # "damaged": would be removed
    state_file.write_text(json.dumps(state))
    args = ["run", str(OFFLINE_CONFIG), "--out", str(run_copy), *set_args(kit_overrides)]
    code, errors, _ = invoke(*args, "--force", "classes")
    assert code == 0 and not errors
    assert _unchanged(run_copy, planted) and victim.read_text() == "outside the run\n"

    site = tmp_path / "site"
    mine = _planted(site, {"classes/u.txt": "u\n", "thumbs/u.txt": "u\n", "leaks/u.txt": "u\n",
                           "index.html": "<p>mine</p>\n"})  # fmt: skip
    code, errors, _ = invoke("report", "--run", str(run_copy), "--out", str(site), "--force")
    assert code == 0 and not errors
    assert _unchanged(site, {k: v for k, v in mine.items() if k != "index.html"})
    code, errors, _ = invoke("report", "--run", str(run_copy), "--out", str(site))  # again
    assert code == 0 and not errors and (site / "classes" / "u.txt").is_file()
    line = one_line(2, "report", "--run", str(run_copy), "--out", str(run_copy), "--force")
    assert "is a run directory" in line
    line = one_line(2, "report", "--run", str(run_copy), "--out", str(run_copy / "leaks"))
    assert "is inside the run" in line
    assert len(list((run_copy / "leaks").glob("eval-*.jpg"))) > 1  # the stage's own, kept


def test_only_a_folder_diversynth_made_is_taken_for_a_run(tmp_path: Path) -> None:
    """An empty .lock or .state/ beside a user's config is no proof of a run (the config
    was replaced); a FIFO as the lock file blocked for ever; a dangling --out link."""
    import os

    for made in (".lock", ".state"):
        project = tmp_path / f"proj{made}"
        project.mkdir()
        (project / made).mkdir() if made == ".state" else (project / made).touch()
        planted = _planted(project, {"config.yaml": "name: mine\n"})
        line = one_line(2, "run", str(OFFLINE_CONFIG), "--out", str(project), "--stages",
                        "classes")  # fmt: skip
        assert "holds files that are not a diversynth run" in line
        assert _unchanged(project, planted)
    run = tmp_path / "run"
    RunDir(run).claim()
    os.mkfifo(run / ".lock")
    line = one_line(2, "run", str(OFFLINE_CONFIG), "--out", str(run), "--stages", "classes")
    assert ".lock' is not a regular file" in line
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    line = one_line(2, "run", str(OFFLINE_CONFIG), "--out", str(tmp_path / "gone"))
    assert "is a symbolic link to" in line and "which does not exist" in line


def test_more_mistakes_each_one_line(kit: dict[str, Path], tmp_path: Path) -> None:
    """What a second hostile probe found: each is one line naming the right thing."""
    import os

    config = str(OFFLINE_CONFIG)
    assert "expected key.path=value" in one_line(2, "plan", config, "--set", "generate..steps=3")
    line = one_line(2, "run", config, "--out", str(tmp_path / "r"), "--force", "trian")
    assert line.startswith("error: --force: unknown stage(s) 'trian'")
    twice = f"evaluate.sets=[{{name: s, root: {tmp_path}}}, {{name: s, root: {tmp_path}}}]"
    line = one_line(2, "plan", config, "--set", twice)
    assert "set names must differ" in line
    line = one_line(2, "plan", config, "--set", "evaluate.groups={many_above: 5, few_below: 100}")
    assert line.startswith("error: evaluate.groups: few_below (100)")
    os.mkfifo(tmp_path / "model.safetensors")
    line = one_line(
        2, "evaluate-model", config, "--checkpoint", str(tmp_path / "model.safetensors")
    )
    assert "is a FIFO (named pipe), not a regular file" in line
    line = one_line(2, "plan", config, "--set", "generate.model=/")
    assert "holds more than 10,000 files: not a model folder" in line
    clip = Path(shutil.copytree(kit["open-clip"], tmp_path / "clip"))
    (clip / "open_clip_config.json").write_text("{not json")
    line = one_line(2, "plan", config, "--set", f"clip.model=local-dir:{clip}")
    assert "open_clip_config.json' is not JSON" in line
    sd = Path(shutil.copytree(kit["stable-diffusion"], tmp_path / "sd"))
    for file in (sd / "tokenizer").iterdir():
        file.unlink()
    line = one_line(2, "plan", config, "--set", f"generate.model={sd}")
    assert "tokenizer' is empty" in line
    big = tmp_path / "classes.txt"
    big.write_text("ab\n" * (12 << 20))  # 36 MB
    line = one_line(2, "plan", config, "--set", "classes.names=null", "--set",
                    f"classes.file={big}")  # fmt: skip
    assert "above the bound of 32 MB" in line

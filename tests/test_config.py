"""Bad configs fail before any work, naming the field and the value on one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import OFFLINE_CONFIG, cli, set_args, tree_snapshot

from diversynth.config import ConfigError, load_config, parse_overrides


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


BAD_SETTINGS = [
    ("generate.stpes=3", "generate.stpes", "3"),  # misspelt key
    ("generate.steps=many", "generate.steps", "'many'"),  # wrong type
    ("train.batch_size=[1, 2]", "train.batch_size", "[1, 2]"),  # wrong type
    ("generate.model=./models/missing/sd", "generate.model", "'./models/missing/sd'"),
    ("clip.model=local-dir:/nonexistent/clip", "clip.model", "/nonexistent/clip"),
    ("data.root=/nonexistent/fashion", "data.root", "'/nonexistent/fashion'"),
]


@pytest.mark.slow
def test_bad_config_fails_at_once_and_leaves_run_dir_unchanged(
    run_copy: Path, kit_overrides: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One `error:` line naming the field and the value, and a finished run left as it
    was. The command runs in this process (typer's runner), the first also as the real
    command in a child process."""
    from typer.testing import CliRunner

    from diversynth.commands.cli import app

    monkeypatch.setenv("COLUMNS", "200")
    before = tree_snapshot(run_copy)
    for k, (override, field, value) in enumerate(BAD_SETTINGS):
        args = ["run", str(OFFLINE_CONFIG), "--out", str(run_copy),
                *set_args([*kit_overrides, override])]  # fmt: skip
        if k == 0:
            result = cli(*args)
            failed, stderr = result.returncode != 0, result.stderr
        else:
            run = CliRunner().invoke(app, args)
            # an exception other than the command's own exit would be a crash
            failed = run.exit_code != 0 and isinstance(run.exception, SystemExit)
            stderr = run.stderr
        assert failed, (override, stderr)
        lines = _error_lines(stderr)
        assert len(lines) == 1, (override, stderr)
        assert lines[0].startswith(f"error: {field}:") and value in lines[0], lines[0]
        assert "Traceback" not in stderr
        assert tree_snapshot(run_copy) == before, override


def test_misspelt_key_suggests_the_right_one(tmp_path: Path) -> None:
    data = yaml.safe_load(OFFLINE_CONFIG.read_text())
    data["train"]["epochz"] = 2
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(
        ConfigError, match=r"train\.epochz: unknown key \(value: 2\); did you mean 'epochs'"
    ):
        load_config(path)


@pytest.mark.slow
def test_bad_config_does_not_create_the_run_dir(tmp_path: Path) -> None:
    out = tmp_path / "never"
    result = cli("run", str(OFFLINE_CONFIG), "--out", str(out), "--set", "seed=zero")
    assert result.returncode != 0
    [line] = _error_lines(result.stderr)
    assert line.startswith("error: seed: Input should be a valid integer")
    assert line.endswith("(got 'zero')")
    assert not out.exists()


@pytest.mark.slow
def test_missing_config_file_and_unknown_stage(tmp_path: Path) -> None:
    result = cli("run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "r"))
    assert result.returncode != 0 and "nope.yaml" in result.stderr
    result = cli(
        "run", str(OFFLINE_CONFIG), "--out", str(tmp_path / "r"), "--stages", "classes,paint"
    )
    assert result.returncode != 0 and "'paint'" in result.stderr
    assert not (tmp_path / "r").exists()


def test_overrides_are_yaml_values(kit_overrides: list[str]) -> None:
    assert parse_overrides(["a.b=3", "c=true", "d=[x, y]", "e=null"]) == [
        ("a.b", 3),
        ("c", True),
        ("d", ["x", "y"]),
        ("e", None),
    ]
    with pytest.raises(ConfigError, match="expected key.path=value"):
        parse_overrides(["novalue"])
    config = load_config(
        OFFLINE_CONFIG, [*kit_overrides, "generate.steps=7", "prompts.per_class=3"]
    )
    assert config.generate.steps == 7 and config.prompts.per_class == 3


def test_paths_are_resolved_and_saved(finished_run: Path) -> None:
    saved = yaml.safe_load((finished_run / "config.yaml").read_text())
    assert Path(saved["generate"]["model"]).is_absolute()
    assert saved["clip"]["model"].startswith("local-dir:/")
    # the saved config is itself a valid config that reproduces the run's settings
    assert load_config(finished_run / "config.yaml").model_dump(mode="json") == saved


def test_exactly_one_class_source(tmp_path: Path) -> None:
    data = yaml.safe_load(OFFLINE_CONFIG.read_text())
    data["classes"] = {}
    data["generate"]["model"] = str(tmp_path)
    data["clip"]["model"] = f"local-dir:{tmp_path}"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(
        ConfigError, match=r"classes: give exactly one of classes.catalog, .*\(got none\)"
    ):
        load_config(path)
    data["classes"] = {"catalog": "imagenet1k", "names": ["a"]}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"\(got \['catalog', 'names'\]\)"):
        load_config(path)


def test_aux_norm_is_one_setting_and_the_old_pair_still_reads(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], kit_overrides: list[str]
) -> None:
    """`train.aux_norm: batchnorm | layernorm | off`; a config of the earlier form
    (`aux_bn` with `aux_norm`) reads the same, with one deprecation line, and hashes as
    before, so runs and sweeps made then are not trained again."""
    from diversynth import config as config_module
    from diversynth.config import TrainConfig, fingerprinted

    monkeypatch.setattr(config_module, "_SAID", set())
    assert TrainConfig().aux_norm == "batchnorm" and TrainConfig().aux
    assert TrainConfig.model_validate({"aux_norm": False}).aux_norm == "off"  # a bare YAML off
    assert capsys.readouterr().err == ""
    old = TrainConfig.model_validate({"aux_bn": False, "aux_norm": "layernorm"})
    assert old.aux_norm == "off" and not old.aux
    assert TrainConfig.model_validate({"aux_bn": True, "aux_norm": "layernorm"}).aux_norm == (
        "layernorm"
    )
    TrainConfig.model_validate({"aux_bn": False})  # said once a process
    assert capsys.readouterr().err.splitlines() == [
        "warning: train.aux_bn: false is deprecated and goes in a later release; it reads "
        "as train.aux_norm: off",
        "warning: train.aux_bn: true is deprecated and goes in a later release; it reads "
        "as train.aux_norm: layernorm",
    ]
    with pytest.raises(ValueError, match=r"train.aux_bn: give true or false \(got 'maybe'\)"):
        TrainConfig.model_validate({"aux_bn": "maybe"})
    with pytest.raises(ValueError, match="aux_norm"):
        TrainConfig.model_validate({"aux_norm": "groupnorm"})
    # the train section hashed in its earlier form: aux_bn, and aux_norm as it was then
    for aux_norm, hashed in (("off", (False, "batchnorm")), ("layernorm", (True, "layernorm"))):
        config = load_config(OFFLINE_CONFIG, [*kit_overrides, f"train.aux_norm={aux_norm}"])
        train = fingerprinted(config)["train"]
        assert (train["aux_bn"], train["aux_norm"]) == hashed


@pytest.mark.slow
def test_a_config_in_the_earlier_aux_bn_form_resumes_its_run(
    run_copy: Path, tmp_path: Path
) -> None:
    """A run's own config.yaml, written back in the form it had before `aux_norm: off` took
    in `aux_bn`: every stage is up to date (nothing trains again), with one warning line."""
    saved = yaml.safe_load((run_copy / "config.yaml").read_text())
    assert saved["train"]["aux_norm"] == "batchnorm" and "aux_bn" not in saved["train"]
    saved["train"]["aux_bn"] = True
    earlier = tmp_path / "earlier.yaml"
    earlier.write_text(yaml.safe_dump(saved, sort_keys=False))
    result = cli("run", str(earlier), "--out", str(run_copy))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("skipped: up to date") == 7, result.stderr
    assert result.stderr.count("warning: train.aux_bn: true is deprecated") == 1


def test_a_setting_added_later_leaves_old_fingerprints_alone_until_it_is_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A release that adds a setting must not make every finished stage run again (nor
    have generate discard every shard as made for other settings): a key the frozen list
    lacks is hashed only where set to other than its default, at any depth (in a section,
    in a list's items)."""
    from diversynth.config import fingerprinted
    from diversynth.config import hashed_keys as module

    frozen = module.hashed_keys()
    # llm.max_in_flight and prompts.embedder: defaults a validator turns into a number and a
    # model path
    added = {"train.label_smoothing", "train.ema", "evaluate.sets[].restrict",
             "llm.max_in_flight", "prompts.embedder"}  # fmt: skip
    monkeypatch.setattr(module, "hashed_keys", lambda: frozen - added)
    sets = f"evaluate.sets=[{{name: sketch, root: {tmp_path}}}]"
    data = fingerprinted(load_config(OFFLINE_CONFIG, [sets]))
    assert "label_smoothing" not in data["train"] and "ema" not in data["train"]
    assert "max_in_flight" not in data["llm"] and "embedder" not in data["prompts"]
    assert data["evaluate"]["sets"] == [{"name": "sketch", "root": str(tmp_path)}]
    assert data["train"]["optimizer"] == "sgd"  # a listed key at its default is hashed
    given_as_default = fingerprinted(load_config(OFFLINE_CONFIG, ["train.label_smoothing=0"]))
    assert "label_smoothing" not in given_as_default["train"]
    overrides = [sets.replace("}]", ", restrict: true}]"), "train.label_smoothing=0.1",
                 "train.ema.decay=0.999", "llm.max_in_flight=4"]  # fmt: skip
    data = fingerprinted(load_config(OFFLINE_CONFIG, overrides))
    assert data["llm"]["max_in_flight"] == 4
    assert data["train"]["label_smoothing"] == 0.1 and data["train"]["ema"]["decay"] == 0.999
    assert data["evaluate"]["sets"][0]["restrict"] is True


def test_every_key_fingerprints_hash_is_still_in_the_schema() -> None:
    """Taking out or renaming a key changes every fingerprint that hashed it: map it back
    in `fingerprinted` (as train.aux_bn is) and keep it listed here as handled."""
    from diversynth.config import RunConfig
    from diversynth.config.hashed_keys import hashed_keys, schema_keys

    handled: set[str] = set()
    assert hashed_keys() - handled <= set(schema_keys(RunConfig))

"""What made a run (libraries, device, CPU kernels) and `diversynth env`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import OFFLINE_CONFIG, cli, set_args, tree_snapshot

from diversynth.run import provenance as environment


def test_changes_name_each_value_that_differs_and_ignore_unknown_ones() -> None:
    recorded = {
        "libraries": {"diffusers": "0.42.1", "torch": "2.14.1"},
        "device": {"device": "cpu", "aten": "AVX2"},
        "models": {"clip.model": None},
    }
    current = {
        "libraries": {"diffusers": "0.43.0", "torch": "2.14.1"},
        "device": {"device": "cpu", "aten": "AVX512"},
        "models": {"clip.model": "abc"},
    }
    assert environment.changes(recorded, current) == [
        "device.aten AVX2 -> AVX512",
        "libraries.diffusers 0.42.1 -> 0.43.0",
    ]
    assert environment.check_kept_work(recorded, recorded, "x", "y", allow=False) is None
    with pytest.raises(environment.VersionChangeError, match="diffusers 0.42.1 -> 0.43.0"):
        environment.check_kept_work(recorded, current, "train: the state was", "y", allow=False)
    change = environment.check_kept_work(recorded, current, "x", "y", allow=True)
    assert change is not None and len(change["changes"]) == 2


def test_onednn_isa_is_the_cpus_best_capped_by_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    amx = {"sse4_1", "avx", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"}
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert environment.onednn_isa(amx) == "AVX512_CORE_AMX"
    assert environment.onednn_isa({"sse4_1", "avx", "avx2"}) == "AVX2"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert environment.onednn_isa(amx) == "AVX2"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")  # a cap above the CPU: no effect
    assert environment.onednn_isa({"sse4_1", "avx", "avx2"}) == "AVX2"


def _fake_installed(folder: Path, name: str, version: str) -> Path:
    """A distribution record that importlib.metadata finds before the real one (the
    package itself still imports from site-packages): what an upgrade looks like to the
    version check."""
    info = folder / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return folder


@pytest.mark.slow
def test_resume_after_a_library_upgrade_stops_and_names_it(
    run_copy: Path, kit_overrides: list[str], tmp_path: Path
) -> None:
    plan = json.loads((run_copy / "shards" / "plan.json").read_text())
    made = plan["made_with"]
    assert made["libraries"]["diffusers"] == environment.version("diffusers")
    assert made["device"]["device"] == "cpu" and made["device"]["threads"] == 1
    for suffix in ("tar", "json", "rows.parquet"):  # one shard to make again, four to keep
        (run_copy / "shards" / f"000004.{suffix}").unlink()
    before = tree_snapshot(run_copy / "shards")
    upgraded = _fake_installed(tmp_path / "site", "diffusers", "99.0.0")
    env = {"PYTHONPATH": str(upgraded)}
    args = ["generate", str(OFFLINE_CONFIG), "--out", str(run_copy), *set_args(kit_overrides)]

    stopped = cli(*args, env=env)
    assert stopped.returncode == 1
    assert "Traceback" not in stopped.stderr
    errors = [line for line in stopped.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stopped.stderr
    assert "4 finished shard(s)" in errors[0]
    assert f"libraries.diffusers {environment.version('diffusers')} -> 99.0.0" in errors[0]
    assert "--allow-version-change" in errors[0]
    assert tree_snapshot(run_copy / "shards") == before  # nothing made, nothing discarded

    allowed = cli(*args, "--allow-version-change", env=env)
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    plan = json.loads((run_copy / "shards" / "plan.json").read_text())
    assert plan["made_with"]["libraries"]["diffusers"] == "99.0.0"
    [change] = plan["version_changes"]
    assert any("99.0.0" in line for line in change["changes"])
    assert (run_copy / "shards" / "000004.tar").is_file()
    state = json.loads((run_copy / ".state" / "generate.json").read_text())
    assert state["made_with"]["libraries"]["diffusers"] == "99.0.0"


@pytest.mark.slow
def test_env_reports_this_machine_and_a_one_token_generation(tmp_path: Path) -> None:
    result = cli("env", "--run", str(tmp_path / "runs" / "new"))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    parts = {line.split()[1]: line for line in lines[1:-1]}
    for part in ("python", "libraries", "torch", "CUDA", "llm", "bundled:smollm2",
                 "bundled:minilm", "wordnet", "chromium", "disk"):  # fmt: skip
        assert part in parts, result.stdout
    assert "ok" in parts["llm"] and "one token in" in parts["llm"]
    assert "llamacpp:SmolLM2-135M-Instruct.Q4_1.gguf" in parts["llm"]
    assert "AMX_INT8" not in parts["llm"]  # the portable build has no AMX kernels
    assert "GB free at" in parts["disk"]
    assert lines[-1] == "everything needed works"


@pytest.mark.slow
def test_env_names_the_missing_model_a_config_needs(kit_overrides: list[str],
                                                    tmp_path: Path) -> None:  # fmt: skip
    config = tmp_path / "config.yaml"
    shutil.copy(OFFLINE_CONFIG, config)
    missing = "someone/not-downloaded-model"
    result = cli("env", str(config), *set_args([*kit_overrides, f"generate.model={missing}"]),
                 env={"HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 1
    broken = [line for line in result.stdout.splitlines() if "BROKEN" in line]
    assert len(broken) == 1 and "generate.model" in broken[0] and missing in broken[0]
    assert result.stdout.splitlines()[-1] == "broken: generate.model"

    gone = cli("env", str(config), *set_args([*kit_overrides, "llm.model=/no/such/model.gguf"]))
    assert gone.returncode == 1
    assert "llm.model: path does not exist" in gone.stdout

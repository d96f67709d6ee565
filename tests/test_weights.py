"""A damaged local model is named when the config is read, not by a library's traceback at
the stage that loads it: a Git LFS pointer, a pickle renamed `.safetensors`, a download cut
short, a pipeline folder with a component missing or without its weights, a config file in
it that is not JSON. Only the headers of weights files are read. Each test damages a copy
of a model of the kit in tmp_path; each error line names the setting and the file."""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import OFFLINE_CONFIG, cli, set_args
from safetensors.numpy import save_file
from test_hostile import one_error

from diversynth.config import ConfigError, load_config
from diversynth.models.assets import resolve_bundled
from diversynth.models.safe_weights import (
    DamagedWeightsError,
    ModelFolderError,
    check_local_weights,
    check_pipeline_folder,
)

# what a clone without `git lfs` leaves in place of a file (131 bytes)
LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    "size 3438167536\n"
)
UNET = "unet/diffusion_pytorch_model.safetensors"


def refused(overrides: list[str]) -> str:
    """The one line of the ConfigError that reading the offline config with `overrides` gives."""
    with pytest.raises(ConfigError) as caught:
        load_config(OFFLINE_CONFIG, overrides)
    lines = str(caught.value).splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def sd(kit: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the kit's Stable Diffusion pipeline folder, to damage."""
    return Path(shutil.copytree(kit["stable-diffusion"], tmp_path / "sd"))


def test_a_safetensors_that_is_a_git_lfs_pointer_is_refused_by_the_command(
    sd: Path, kit_overrides: list[str], tmp_path: Path
) -> None:
    """The real command: one line, exit 2, before the run directory exists."""
    (sd / UNET).write_text(LFS_POINTER)
    out = tmp_path / "run"
    overrides = [*kit_overrides, f"generate.model={sd}"]
    line = one_error(cli("run", str(OFFLINE_CONFIG), "--out", str(out), *set_args(overrides)), 2)
    assert line.startswith(f"error: generate.model: '{sd / UNET}' is a Git LFS pointer")
    assert "the 3.4 GB file it stands for is not here" in line
    assert f"run 'git lfs pull' in '{sd / 'unet'}'" in line
    assert not out.exists()


def test_a_pickle_renamed_safetensors_is_named(
    kit: dict[str, Path], kit_overrides: list[str], tmp_path: Path
) -> None:
    clip = Path(shutil.copytree(kit["open-clip"], tmp_path / "clip"))
    weights = clip / "open_clip_model.safetensors"
    torch.save({"weight": torch.zeros(2)}, weights)  # a zip archive holding a pickle
    line = refused([*kit_overrides, f"clip.model=local-dir:{clip}"])
    assert line.startswith(f"clip.model: '{weights}' is a zip archive (what torch.save "
                           "writes: a pickle), not a safetensors file")  # fmt: skip

    minilm = Path(shutil.copytree(resolve_bundled("bundled:minilm"), tmp_path / "minilm"))
    weights = minilm / "model.safetensors"
    torch.save({"weight": torch.zeros(2)}, weights, _use_new_zipfile_serialization=False)
    line = refused([*kit_overrides, f"prompts.embedder={minilm}"])
    assert line.startswith(f"prompts.embedder: '{weights}' is a pickle, not a safetensors file")


def test_a_safetensors_cut_short_is_named(kit_overrides: list[str], tmp_path: Path) -> None:
    minilm = Path(shutil.copytree(resolve_bundled("bundled:minilm"), tmp_path / "minilm"))
    weights = minilm / "model.safetensors"
    whole = weights.read_bytes()
    setting = [*kit_overrides, f"prompts.embedder={minilm}"]
    weights.write_bytes(whole[:-1])  # the last byte of the last tensor missing
    line = refused(setting)
    assert line.startswith(f"prompts.embedder: '{weights}' is cut short: its header describes")
    assert "a download that did not finish?" in line
    weights.write_bytes(whole[:100])  # cut inside the header
    assert f"'{weights}' is cut short: its header alone is" in refused(setting)
    weights.write_bytes(b"")
    assert f"'{weights}' is empty (0 bytes)" in refused(setting)
    weights.write_bytes(whole + b"\0")  # safetensors refuses bytes past the last tensor
    assert f"'{weights}' is damaged: it holds 1 byte more than" in refused(setting)


def test_a_sharded_model_with_a_shard_missing_is_named(
    kit_overrides: list[str], tmp_path: Path
) -> None:
    minilm = Path(shutil.copytree(resolve_bundled("bundled:minilm"), tmp_path / "minilm"))
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    (minilm / "model.safetensors").rename(minilm / shards[0])
    weight_map = {"a": shards[0], "b": shards[1]}
    (minilm / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    line = refused([*kit_overrides, f"prompts.embedder={minilm}"])
    assert line.startswith(f"prompts.embedder: '{minilm / shards[1]}' is missing: "
                           "model.safetensors.index.json names it as a shard")  # fmt: skip


def test_a_gguf_that_is_a_git_lfs_pointer_is_named(
    kit_overrides: list[str], tmp_path: Path
) -> None:
    gguf = tmp_path / "SmolLM2.gguf"
    gguf.write_text(LFS_POINTER)
    setting = [*kit_overrides, f"llm.model={gguf}"]
    line = refused(setting)
    assert line.startswith(f"llm.model: '{gguf}' is a Git LFS pointer, not the weights")
    assert f"run 'git lfs pull' in '{tmp_path}'" in line
    gguf.write_text("<!DOCTYPE html>\n<html><head><title>SmolLM2.gguf</title>")
    assert f"llm.model: '{gguf}' is a web page (HTML), not a GGUF file" in refused(setting)
    gguf.write_bytes(b"GGUF\x03\0\0\0")
    assert f"llm.model: '{gguf}' is cut short: 8 bytes" in refused(setting)
    check_local_weights("llm.model", resolve_bundled("bundled:smollm2"), also=(".gguf",))


def test_a_pipeline_folder_without_a_component_is_refused(
    sd: Path, kit_overrides: list[str]
) -> None:
    setting = [*kit_overrides, f"generate.model={sd}"]
    index = json.loads((sd / "model_index.json").read_text())
    assert index["safety_checker"] == [None, None]  # saved as left out: no folder needed
    check_pipeline_folder(sd)
    # named but not loaded unless generate.safety_checker is true: its folder may be absent
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    (sd / "model_index.json").write_text(json.dumps(index))
    check_pipeline_folder(sd)
    shutil.rmtree(sd / "unet")
    line = refused(setting)
    assert line.startswith(f"generate.model: '{sd / 'unet'}' is missing (model_index.json "
                           "names unet a diffusers UNet2DConditionModel): download it")  # fmt: skip


def test_a_component_folder_without_its_weights_is_refused(
    sd: Path, kit_overrides: list[str]
) -> None:
    """Models hold weights; the tokenizer and the scheduler (the kit has both) hold none."""
    setting = [*kit_overrides, f"generate.model={sd}"]
    (sd / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    line = refused(setting)
    assert line.startswith(f"generate.model: '{sd / 'vae'}' holds no weights (no "
                           ".safetensors file; model_index.json names vae a diffusers "
                           "AutoencoderKL)")  # fmt: skip
    (sd / "vae" / "config.json").unlink()
    (sd / "vae" / "README.md").write_text("weights elsewhere\n")
    assert f"'{sd / 'vae'}' has no config.json" in refused(setting)
    (sd / "vae" / "README.md").unlink()
    assert f"'{sd / 'vae'}' is empty" in refused(setting)


def test_a_model_index_that_is_not_json_names_the_file(sd: Path, kit_overrides: list[str]) -> None:
    from diversynth.models.pipeline_traits import PipelineTraitsError, read_json

    setting = [*kit_overrides, f"generate.model={sd}"]
    index_file = sd / "model_index.json"
    index = json.loads(index_file.read_text())
    index_file.write_text('{"_class_name": "StableDiffusionPipeline",\n "unet": [')
    line = refused(setting)
    assert line.startswith(f"generate.model: '{index_file}' is not JSON (Expecting value: "
                           "line 2 column")  # fmt: skip
    assert line.endswith(")")  # the file is named: the folder value is not repeated
    index_file.write_text("[]")
    assert f"'{index_file}' holds an array, not a JSON object" in refused(setting)
    index_file.write_text(json.dumps({**index, "unet": ["diffusers"]}))
    assert f"'{index_file}': the entry for 'unet' is not [library, class]" in refused(setting)
    index_file.write_bytes(b"{" + b" " * (9 << 20) + b"}")  # read up to a bound only
    assert f"'{index_file}' is 9.0 MB, above the bound of 8 MB" in refused(setting)

    # a component's config: when the config is read, and by the pipeline's traits
    index_file.write_text(json.dumps(index))
    unet_config = sd / "unet" / "config.json"
    unet_config.write_text('{"in_channels": 4,')
    assert f"generate.model: '{unet_config}' is not JSON" in refused(setting)
    with pytest.raises(PipelineTraitsError, match=rf"^generate.model: '{unet_config}' is not "):
        read_json(str(sd), "unet/config.json")
    assert read_json(str(sd), "no/such.json") is None


def test_only_the_headers_are_read(tmp_path: Path) -> None:
    """A 4 GB weights file (sparse: its tensor bytes are never written) is checked in
    milliseconds; a header of 640 bytes starts as a pickle does and is no pickle."""
    big = tmp_path / "big.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 30], "data_offsets": [0, 1 << 32]}})
    header = header.encode().ljust(-(-len(header) // 8) * 8)
    with big.open("wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
    os.truncate(big, 8 + len(header) + (1 << 32))
    start = time.perf_counter()
    check_local_weights("generate.model", big)
    assert time.perf_counter() - start < 0.5
    os.truncate(big, 8 + len(header) + (1 << 31))
    with pytest.raises(DamagedWeightsError, match=r"is cut short: its header describes "
                                                  r"4,294,967,296 bytes of tensors, the file "
                                                  r"holds 2,147,483,648 bytes"):  # fmt: skip
        check_local_weights("generate.model", big)

    padded = tmp_path / "padded.safetensors"
    for length in range(700):  # metadata that makes the header 640 bytes long
        save_file({"w": np.zeros(2, "float32")}, str(padded), metadata={"note": "x" * length})
        if padded.read_bytes()[:2] == b"\x80\x02":
            break
    assert padded.read_bytes()[:2] == b"\x80\x02"
    check_local_weights("generate.model", padded)
    save_file({}, str(padded))  # no tensors at all: a whole file too
    check_local_weights("generate.model", padded)


def test_env_names_a_damaged_weights_file(
    sd: Path, kit_overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`diversynth env`: the config's check names the file; a bundled asset gets the same."""
    from diversynth.commands import env as env_report
    from diversynth.models import assets

    (sd / UNET).write_text(LFS_POINTER)
    parts = env_report.collect(OFFLINE_CONFIG, [*kit_overrides, f"generate.model={sd}"], None)
    report = env_report.render(parts)
    [broken] = [line for line in report.splitlines() if "BROKEN" in line]
    assert f"generate.model: '{sd / UNET}' is a Git LFS pointer" in broken
    assert report.splitlines()[-1] == "broken: config"

    pointer = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    pointer.write_text(LFS_POINTER)
    real = assets.resolve_bundled
    monkeypatch.setattr(assets, "resolve_bundled", lambda ref: pointer if ref ==
                        "bundled:smollm2" else real(ref))  # fmt: skip
    smollm2 = next(p for p in env_report._assets(None) if p.name == "bundled:smollm2")
    assert smollm2.fails and f"'{pointer}' is a Git LFS pointer" in smollm2.detail
    llm = env_report._llm_part(None, needed=True)  # named before llama.cpp is asked to load it
    assert llm.fails and f"llm.model: '{pointer}' is a Git LFS pointer" in llm.detail


def test_a_config_file_of_a_folder_is_a_model_folder_error(sd: Path) -> None:
    """Called outside config validation, the checks name the setting they are given."""
    (sd / "scheduler" / "scheduler_config.json").write_text("")
    with pytest.raises(ModelFolderError, match=r"^generate.model: '.*scheduler_config.json' "
                                               r"is empty$"):  # fmt: skip
        check_pipeline_folder(sd, "generate.model")

"""Shards: killed at random moments, the resumed run equals an uninterrupted one, byte for byte."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    OFFLINE_CONFIG,
    REPO,
    assert_same_shards,
    cli,
    copy_before_generate,
    set_args,
    wait_for_new_temp_file,
)

from diversynth.run.artifacts.shard_plan import image_key, plan_shards
from diversynth.run.artifacts.shards import clean_leftovers, written_by

GENERATE_ONLY = ["--stages", "classes,prompts,generate"]


def test_plan_is_fixed_by_prompt_ranges() -> None:
    shards = plan_shards([3] * 10, images_per_shard=7)
    assert [(s.prompt_start, s.prompt_stop, s.images) for s in shards] == [
        (0, 2, 6), (2, 4, 6), (4, 6, 6), (6, 8, 6), (8, 10, 6),
    ]  # fmt: skip
    # more images per prompt than per shard: one prompt per shard, never split
    assert all(s.prompt_stop - s.prompt_start == 1 for s in plan_shards([5] * 3, 2))
    # prompts with more images (a repeated text's): consecutive prompts while they fit
    shards = plan_shards([2, 4, 2, 2, 6, 1], images_per_shard=6)
    assert [(s.prompt_start, s.prompt_stop, s.images) for s in shards] == [
        (0, 2, 6), (2, 4, 4), (4, 5, 6), (5, 6, 1),
    ]  # fmt: skip
    assert image_key(12, 1) == "p00000012_i001"


def test_leftovers_are_removed_and_files_no_plan_names_are_kept(tmp_path: Path) -> None:
    """Temp files, unfinished shards and shards of an earlier, larger plan go; a file that
    no plan of the run named (the user's, or one of another tool) stays, whatever its
    name looks like."""
    names = ["000000.tar", "000000.json", "000000.rows.parquet", "000001.tar",
             "000001.rows.parquet", "000002.tar.0123456789ab.tmp", ".000003.json.k2_x9.tmp",
             ".plan.json.abc123.tmp", "000003.tar.5f1ab2c3d4e5f607-0123456789ab.tmp"]  # fmt: skip
    names += ["000009.tar", "000009.json", "plan.json"]  # 000009: named by the plan before
    foreign = ["notes.txt", "backup.tar", "catalog.json", "000042.tar", "x.tmp", "000002.tar.tmp"]
    for name in names + foreign:
        (tmp_path / name).write_text("x")
    known = {f"{i:06d}" for i in range(10)}
    # a ray worker's temp file carries its node's tag: what a lost node was making
    assert written_by(tmp_path, "5f1ab2c3d4e5f607") == ["000003"]
    assert written_by(tmp_path, "5f1ab2c3d4e5f608") == []
    found = clean_leftovers(tmp_path, planned={"000000", "000001", "000002", "000003"},
                            known=known)  # fmt: skip
    assert found.removed == 8
    assert found.foreign == sorted(foreign)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["000000.json", "000000.rows.parquet", "000000.tar", "plan.json", *foreign]
    )


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(
    finished_run: Path, kit_overrides: list[str], tmp_path: Path
) -> None:
    out = copy_before_generate(finished_run, tmp_path / "killed")
    args = [sys.executable, "-m", "diversynth", "run", str(OFFLINE_CONFIG), "--out", str(out),
            *GENERATE_ONLY, *set_args(kit_overrides)]  # fmt: skip
    rng = random.Random(1234)
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(
            args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        # kill at a random moment once this process writes a shard (a new temp file)
        wait_for_new_temp_file(out / "shards", proc)
        time.sleep(rng.uniform(0.0, 1.0))
        if proc.poll() is not None:
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills >= 3
    result = cli(
        "run", str(OFFLINE_CONFIG), "--out", str(out), *GENERATE_ONLY, *set_args(kit_overrides)
    )
    assert result.returncode == 0, result.stderr

    assert_same_shards(out, finished_run)


@pytest.mark.slow
def test_exception_mid_shard_leaves_no_partial_shard(
    kit_overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_after_batches = 3  # batches of 8, shards of 16: inside the second shard
    from diversynth.config import load_config
    from diversynth.models import generator
    from diversynth.pipeline import run_stages
    from diversynth.run.rundir import RunDir

    config = load_config(
        OFFLINE_CONFIG,
        [
            *kit_overrides,
            "prompts.per_class=4",
            "prompts.shares={naive: 1}",
            "generate.images_per_shard=16",  # 40 images: shards of 16, 16, 8
        ],
    )
    real_call = generator.TextToImage.__call__
    calls = {"n": 0}

    def failing_call(self, prompts, seeds):
        calls["n"] += 1
        if calls["n"] > fail_after_batches:
            raise OSError(28, "No space left on device")
        return real_call(self, prompts, seeds)

    monkeypatch.setattr(generator.TextToImage, "__call__", failing_call)
    run = RunDir(tmp_path / "run")
    with pytest.raises(OSError, match="No space left"):
        run_stages(config, run, stages=["classes", "prompts", "generate"])
    done = sorted(p.name for p in run.shards.iterdir())
    # only whole shards (tar, rows, stats) remain; the shard being written was removed
    assert all(n == "plan.json" or n.endswith((".tar", ".json", ".rows.parquet")) for n in done)
    assert len([n for n in done if n.endswith(".rows.parquet")]) == 1, done
    assert (
        len([n for n in done if n.endswith(".tar")])
        == len([n for n in done if n.endswith(".json")]) - 1
    )
    assert run.read_state("generate") is None

    monkeypatch.setattr(generator.TextToImage, "__call__", real_call)
    run_stages(config, run, stages=["classes", "prompts", "generate"])
    stats = json.loads((run.root / ".state" / "generate.json").read_text())["summary"]
    assert stats["images"] == 40
    assert stats["shards_generated"] == 2  # the first shard was whole and kept
    # a forced rerun regenerates every shard, to the same bytes
    tars = {p.name: p.read_bytes() for p in run.shards.glob("*.tar")}
    run_stages(config, run, stages=["generate"], force=["generate"])
    stats = json.loads((run.root / ".state" / "generate.json").read_text())["summary"]
    assert stats["shards_generated"] == stats["shards"] == 3
    assert {p.name: p.read_bytes() for p in run.shards.glob("*.tar")} == tars


@pytest.mark.slow
def test_clip_threshold_remakes_low_scoring_images_with_derived_seeds(
    kit_overrides: list[str], tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    from diversynth.config import load_config
    from diversynth.pipeline import run_stages
    from diversynth.run.rundir import RunDir
    from diversynth.run.seeding import derive_seed

    base = [*kit_overrides, "prompts.per_class=2", "prompts.shares={naive: 1}",
            "generate.images_per_shard=10"]  # fmt: skip
    run = RunDir(tmp_path / "run")
    run_stages(load_config(OFFLINE_CONFIG, base), run, ["classes", "prompts", "generate"])
    first = {r["key"]: r for r in pq.read_table(run.manifest).to_pylist()}
    threshold = sorted(r["clip_class"] for r in first.values())[len(first) // 2]  # the median

    config = load_config(OFFLINE_CONFIG, [*base, f"generate.clip_threshold={threshold}",
                                          "generate.max_attempts=3"])  # fmt: skip
    outcome = run_stages(config, run, ["classes", "prompts", "generate"])
    assert outcome == {"classes": "skipped", "prompts": "skipped", "generate": "ran"}
    rows = pq.read_table(run.manifest).to_pylist()
    assert len(rows) == len(first) == 20
    for row in rows:
        before = first[row["key"]]
        if before["clip_class"] >= threshold:  # good enough the first time: untouched
            assert (row["attempt"], row["seed"]) == (0, before["seed"])
        else:  # made again: the best of up to 3 tries is kept, with its own seed
            assert row["clip_class"] >= before["clip_class"]
            if row["attempt"]:
                assert row["seed"] == derive_seed(0, row["prompt_id"], row["image_index"],
                                                  row["attempt"])  # fmt: skip
        assert ("below_clip_threshold" in row["flags"]) == (row["clip_class"] < threshold)
    summary = run.read_state("generate").summary
    assert summary["regenerated"] == sum(1 for r in rows if r["attempt"]) > 0
    assert summary["below_clip_threshold"] == sum(1 for r in rows if r["flags"])


@pytest.mark.slow
def test_safety_checker_never_leaves_a_black_image(
    kit: dict[str, Path], kit_overrides: list[str], tmp_path: Path, monkeypatch
) -> None:
    """A tiny safety checker that flags about half of the first images: flagged images are
    made again with derived seeds, and dropped (and counted) if every attempt is flagged.
    CLIP scores every kept image and never spends time on a blacked-out one."""
    import io
    import tarfile

    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from PIL import Image
    from transformers import CLIPConfig, CLIPImageProcessor

    from diversynth.config import load_config
    from diversynth.models.clip import ClipScorer
    from diversynth.models.generator import TextToImage
    from diversynth.pipeline import run_stages
    from diversynth.run.rundir import RunDir, read_jsonl
    from diversynth.run.seeding import derive_seed

    torch.manual_seed(0)
    tiny = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
            "num_hidden_layers": 2}  # fmt: skip
    checker = StableDiffusionSafetyChecker(CLIPConfig(
        text_config={**tiny, "vocab_size": 1000},
        vision_config={**tiny, "image_size": 32, "patch_size": 8}, projection_dim=16))  # fmt: skip
    concept = torch.nn.functional.normalize(torch.randn(16), dim=0)
    checker.concept_embeds.data[:] = concept
    checker.special_care_embeds_weights.data[:] = 2.0  # never "special care"
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32)

    base = [*kit_overrides, "prompts.per_class=2", "prompts.shares={naive: 1}",
            "generate.images_per_shard=10"]  # fmt: skip
    run = RunDir(tmp_path / "run")
    run_stages(load_config(OFFLINE_CONFIG, base), run, ["classes", "prompts"])
    prompts = read_jsonl(run.prompts)
    plain = TextToImage.load(load_config(OFFLINE_CONFIG, base).generate)
    images, _ = plain([p["text"] for p in prompts], [p["image_seeds"][0] for p in prompts])
    with torch.no_grad():
        pooled = checker.vision_model(processor(images, return_tensors="pt").pixel_values)[1]
        cosines = torch.nn.functional.normalize(checker.visual_projection(pooled), dim=-1) @ concept
    checker.concept_embeds_weights.data[:] = cosines.median()  # flags the upper half

    model = tmp_path / "sd-with-checker"
    pipe = StableDiffusionPipeline.from_pretrained(kit["stable-diffusion"], safety_checker=checker,
                                                   feature_extractor=processor)  # fmt: skip
    pipe.save_pretrained(model, safe_serialization=True)
    # a threshold no score is below: ranking and flags must cope with unscored unsafe images
    config = load_config(OFFLINE_CONFIG, [*base, f"generate.model={model}",
                                          "generate.safety_checker=true",
                                          "generate.clip_threshold=-1"])  # fmt: skip
    scored: list[int] = []  # brightest pixel of every image CLIP encodes
    encode_images = ClipScorer.encode_images

    def spy(self: ClipScorer, images: list) -> torch.Tensor:
        scored.extend(int(np.asarray(image).max()) for image in images)
        return encode_images(self, images)

    monkeypatch.setattr(ClipScorer, "encode_images", spy)
    run_stages(config, run, ["generate"])

    summary = run.read_state("generate").summary
    rows = pq_rows(run.manifest)
    planned = sum(len(p["image_seeds"]) for p in prompts)
    assert summary["images"] + summary["dropped_unsafe"] == planned == 20
    assert summary["regenerated"] >= 1 and summary["images"] == len(rows)
    for row in rows:
        assert "unsafe" not in row["flags"]
        image_index = int(row["key"].rsplit("_i", 1)[1])
        assert row["seed"] == derive_seed(0, row["prompt_id"], image_index, row["attempt"])
        assert row["clip_prompt"] is not None and row["clip_class"] is not None
    assert scored and min(scored) > 16, "CLIP scored a blacked-out image"
    for tar in sorted(run.shards.glob("*.tar")):
        with tarfile.open(tar) as handle:
            for member in handle.getmembers():
                if member.name.endswith(".jpg"):
                    pixels = np.asarray(Image.open(io.BytesIO(handle.extractfile(member).read())))
                    assert pixels.max() > 16, f"{member.name} is black"
    config_without = load_config(OFFLINE_CONFIG, [*base, "generate.safety_checker=true"])
    with pytest.raises(Exception, match="has no safety checker"):
        TextToImage.load(config_without.generate)


def pq_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def test_gpu_speed_settings_apply_to_the_pipeline(kit: dict[str, Path]) -> None:
    """The GPU settings, applied on the CPU here: the layout, the fused projections and the
    compiled UNet are in place (the compiled UNet is not run: compiling takes minutes)."""
    import torch
    from diffusers import AutoPipelineForText2Image

    from diversynth.config import GenerateConfig
    from diversynth.models.generator import _speed_up

    pipe = AutoPipelineForText2Image.from_pretrained(kit["stable-diffusion"], use_safetensors=True)
    config = GenerateConfig(model=str(kit["stable-diffusion"]), fuse_qkv=True,
                            channels_last=True, compile="max-autotune-no-cudagraphs")  # fmt: skip
    _speed_up(pipe, config)
    assert pipe.vae.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    processors = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
    assert processors == {"FusedAttnProcessor2_0"}
    assert isinstance(pipe.unet, torch._dynamo.eval_frame.OptimizedModule)
    pipe = AutoPipelineForText2Image.from_pretrained(kit["stable-diffusion"], use_safetensors=True)
    _speed_up(pipe, GenerateConfig(model=str(kit["stable-diffusion"]), compile=True))
    assert isinstance(pipe.unet, torch._dynamo.eval_frame.OptimizedModule)
    # channels_last is off by default (slower for SD 1.5 on an H100)
    assert pipe.vae.encoder.conv_in.weight.is_contiguous()


def test_speed_settings_are_checked(kit: dict[str, Path]) -> None:
    from pydantic import ValidationError

    from diversynth.config import GenerateConfig

    model = str(kit["stable-diffusion"])
    with pytest.raises(ValidationError, match="compile_vae needs generate.compile"):
        GenerateConfig(model=model, compile_vae=True)
    with pytest.raises(ValidationError, match="flash runs float16 and bfloat16 only"):
        GenerateConfig(model=model, sdpa_kernel="flash", dtype="float32")
    with pytest.raises(ValidationError, match="sdpa_kernel"):
        GenerateConfig(model=model, sdpa_kernel="xformers")
    GenerateConfig(model=model, compile="reduce-overhead", compile_vae=True, sdpa_kernel="cudnn")
    GenerateConfig(model=model, sdpa_kernel="efficient", dtype="float32")


def test_speed_settings_left_at_default_keep_the_fingerprint(
    kit_overrides: list[str], tmp_path: Path
) -> None:
    """Runs made before compile_vae and sdpa_kernel existed keep their shards."""
    from diversynth.config import load_config
    from diversynth.pipeline import settings_fingerprint
    from diversynth.run.rundir import RunDir

    def settings(*extra: str) -> tuple[dict, str]:
        config = load_config(OFFLINE_CONFIG, [*kit_overrides, *extra])
        section = config.section("generate")["generate"]
        return section, settings_fingerprint("generate", config, RunDir(tmp_path))

    section, before = settings()
    assert "compile_vae" not in section and "sdpa_kernel" not in section
    assert settings("generate.compile_vae=false", "generate.sdpa_kernel=auto")[1] == before
    section, after = settings("generate.compile=true", "generate.compile_vae=true")
    assert section["compile_vae"] is True and after != settings("generate.compile=true")[1]
    section, after = settings("generate.sdpa_kernel=cudnn")
    assert section["sdpa_kernel"] == "cudnn" and after != before


def test_speed_settings_are_left_off_on_the_cpu(kit: dict[str, Path]) -> None:
    """Like the other GPU settings: loaded on the CPU, the pipeline is left as it is."""
    import numpy as np

    from diversynth.config import GenerateConfig
    from diversynth.models.generator import TextToImage

    def made(**speed: object) -> tuple[TextToImage, list]:
        t2i = TextToImage.load(GenerateConfig(model=str(kit["stable-diffusion"]), device="cpu",
                                              steps=2, height=32, width=32, **speed))  # fmt: skip
        return t2i, [np.asarray(im) for im in t2i(["a cat", "a dog"], [1, 2])[0]]

    t2i, images = made(compile=True, fuse_qkv=True, compile_vae=True, sdpa_kernel="math")
    assert "forward" not in vars(t2i.pipe.unet) and "decode" not in vars(t2i.pipe.vae)
    assert type(t2i.pipe.unet).__name__ == "UNet2DConditionModel"
    assert all((a == b).all() for a, b in zip(images, made()[1], strict=True))


@pytest.mark.slow  # two compilations
def test_sdpa_kernel_is_traced_into_the_compiled_code(
    kit: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU path run on the CPU, compiled by a backend that records the aten graph: the
    decoder compiled with compile_vae runs the kernel sdpa_kernel puts first, even after a
    decoder compiled under torch's own choice, whose graph dynamo would otherwise reuse."""
    import torch
    from diffusers import AutoPipelineForText2Image
    from torch._dynamo.backends.common import aot_autograd
    from torch.nn.attention import SDPBackend

    from diversynth.config import GenerateConfig
    from diversynth.models import generator

    kernels = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
               SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]  # fmt: skip
    assert generator._sdpa_backends("cudnn") == kernels
    # the CPU takes no priority order, only which kernels are on: math alone shows the choice
    monkeypatch.setattr(generator, "_sdpa_backends", lambda name: [SDPBackend.MATH])
    ops: list[set[str]] = []

    def record(graph: torch.fx.GraphModule, example_inputs: list) -> object:
        ops.append({str(node.target) for node in graph.graph.nodes})
        return graph.forward

    backend = aot_autograd(fw_compiler=record)
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **settings: real_compile(fn, backend=backend))
    model = str(kit["stable-diffusion"])
    latents = torch.randn(1, 4, 4, 4)

    def decoded(**speed: object) -> tuple[torch.Tensor, set[str]]:
        pipe = AutoPipelineForText2Image.from_pretrained(model, use_safetensors=True)
        config = GenerateConfig(model=model, compile=True, compile_vae=True, **speed)
        generator._speed_up(pipe, config)
        assert isinstance(pipe.unet, torch._dynamo.eval_frame.OptimizedModule)
        assert ("forward" in vars(pipe.unet._orig_mod)) == ("sdpa_kernel" in speed)
        with torch.inference_mode():
            image = pipe.vae.decode(latents).sample
        return image, ops.pop()  # a new graph: none when dynamo reused the last one

    flash = "aten._scaled_dot_product_flash_attention_for_cpu.default"
    image, graph = decoded()
    assert flash in graph  # torch's own choice on the CPU
    same, graph = decoded(sdpa_kernel="math")
    assert flash not in graph and torch.allclose(image, same, atol=1e-5)

"""Every text-to-image architecture the generate stage runs: tiny random-weight pipelines of
SD 1.5, SD 2.x (v-prediction), SDXL, SDXL-Turbo, SD3 (with and without its T5), PixArt-Sigma,
FLUX.1-schnell and Sana, saved as the hub stores them and loaded through
AutoPipelineForText2Image. Each generates shards, is killed mid-run, resumes to the same
bytes, and is read back by the training stage's shard reader."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import OFFLINE_CONFIG, REPO, built_once

from diversynth.commands.preflight import preflight
from diversynth.config import ConfigError, GenerateConfig, load_config
from diversynth.models.pipeline_traits import prompt_limit, read_traits
from diversynth.pipeline import run_stages
from diversynth.run.rundir import RunDir
from diversynth.testing.tiny_pipelines import save_tiny_pipeline

# arch -> (folder built, components dropped when saved, settings, pipeline class, guidance,
# the prompt limit: tokens and tokenizer of the encoder that reads the most)
MATRIX = {
    "sd15": ("sd15", (), [], "StableDiffusionPipeline", "classifier-free", (77, "CLIP")),
    "sd2": ("sd2", (), [], "StableDiffusionPipeline", "classifier-free", (77, "CLIP")),
    "sdxl": ("sdxl", (), [], "StableDiffusionXLPipeline", "classifier-free", (77, "CLIP")),
    "sdxl-turbo": ("sdxl-turbo", (), ["generate.guidance_scale=0", "generate.steps=1",
                                      "generate.negative_prompt=null"],
                   "StableDiffusionXLPipeline", "classifier-free", (77, "CLIP")),
    "sd3": ("sd3", (), [], "StableDiffusion3Pipeline", "classifier-free", (256, "T5")),
    # saved without its T5 (model_index.json names it null): loads without a setting
    "sd3-saved-without-t5": ("sd3", ("text_encoder_3", "tokenizer_3"), [],
                             "StableDiffusion3Pipeline", "classifier-free", (77, "CLIP")),
    # the whole model, its T5 left out by generate.components
    "sd3-components": ("sd3", (), ["generate.components={text_encoder_3: null, "
                                   "tokenizer_3: null}"],
                       "StableDiffusion3Pipeline", "classifier-free", (77, "CLIP")),
    "pixart-sigma": ("pixart-sigma", (), [], "PixArtSigmaPipeline", "classifier-free",
                     (300, "T5")),
    "flux-schnell": ("flux-schnell", (), ["generate.guidance_scale=null",
                                          "generate.negative_prompt=null"],
                     "FluxPipeline", "none", (512, "T5")),
    "sana": ("sana", (), [], "SanaPipeline", "classifier-free", (300, "Gemma")),
}  # fmt: skip
SHARDS = 5  # 10 classes, one image each, two a shard


def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory, arch: str) -> Path:
    built, drop = MATRIX[arch][:2]
    name = built + ("-" + "-".join(drop) if drop else "")
    return (
        built_once(
            tmp_path_factory,
            f"arch-{name}",
            lambda folder: save_tiny_pipeline(built, folder / "model", drop=drop),
        )
        / "model"
    )


def overrides(model: Path, kit: dict[str, Path], arch: str) -> list[str]:
    return [
        f"generate.model={model}",
        f"clip.model=local-dir:{kit['open-clip']}",
        "prompts.shares={naive: 1}",  # templates: no LLM
        "prompts.per_class=1",
        "prompts.images_per_prompt=1",
        "generate.steps=2",
        "generate.height=32",
        "generate.width=32",
        "generate.batch_size=2",
        f"generate.images_per_shard={10 // SHARDS}",
        "generate.cpu_threads=1",
        "generate.negative_prompt=blurry",  # taken by every classifier-free pipeline
        *MATRIX[arch][2],
    ]


def test_traits_read_from_the_saved_configs(tmp_path_factory: pytest.TempPathFactory) -> None:
    """What each pipeline takes, read without its weights; settings it would drop refused."""
    for arch in ("sd15", "flux-schnell", "sd3-saved-without-t5"):
        model = tiny_pipeline(tmp_path_factory, arch)
        _, _, _, cls, guidance, (tokens, kind) = MATRIX[arch]
        traits = read_traits(str(model))
        assert (traits.pipeline, traits.guidance) == (cls, guidance)
        limit = prompt_limit(GenerateConfig(model=str(model)))
        assert limit is not None and limit.encoder.tokens == tokens
        assert kind in limit.encoder.kind
    sd3 = read_traits(str(tiny_pipeline(tmp_path_factory, "sd3-saved-without-t5")))
    assert sd3.left_out == ("text_encoder_3", "tokenizer_3")
    assert [
        e.tokens for e in read_traits(str(tiny_pipeline(tmp_path_factory, "sd3"))).encoders
    ] == [77, 77, 256]
    # a prompt CLIP truncates is whole for FLUX's T5: only the longest reader limits it
    flux = prompt_limit(GenerateConfig(model=str(tiny_pipeline(tmp_path_factory, "flux-schnell"))))
    long_prompt = "a photo of a tench " + "in the snow " * 30
    assert flux is not None and flux.count(long_prompt) > 77 and flux.fits(long_prompt)


@pytest.mark.slow
def test_plan_counts_flops_of_every_architecture(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`diversynth plan` builds each architecture on the meta device from its saved configs
    and counts one image: denoiser calls (two a step with classifier-free guidance), the VAE
    decode, each text encoder."""
    from diversynth.commands.plan import count_flops

    for arch in ("sd15", "sdxl", "sdxl-turbo", "sd3", "sd3-saved-without-t5", "pixart-sigma",
                 "flux-schnell", "sana"):  # fmt: skip
        model = tiny_pipeline(tmp_path_factory, arch)
        guidance = {"sdxl-turbo": 0.0, "flux-schnell": None}.get(arch, 7.5)
        settings = GenerateConfig(model=str(model), steps=3, height=32, width=32,
                                  guidance_scale=guidance)  # fmt: skip
        parts, pipeline, source = count_flops(settings)
        assert (pipeline, source) == (MATRIX[arch][3], "the model folder")
        assert all(p.flops > 0 for p in parts), (arch, parts)
        guided = MATRIX[arch][4] == "classifier-free" and (guidance or 0) > 1
        assert parts[0].calls == 3 * (2 if guided else 1), arch
        assert parts[1].name == "vae"
        encoders = [p.name for p in parts[2:]]
        assert ("text_encoder_3" in encoders) == (arch == "sd3"), arch


def test_settings_a_pipeline_ignores_are_config_errors(
    tmp_path_factory: pytest.TempPathFactory, kit: dict[str, Path], tmp_path: Path
) -> None:
    flux = tiny_pipeline(tmp_path_factory, "flux-schnell")
    sd15 = tiny_pipeline(tmp_path_factory, "sd15")

    def problems(model: Path, *extra: str, stages: tuple[str, ...] = ("generate",)) -> str:
        config = load_config(
            OFFLINE_CONFIG,
            [f"generate.model={model}", f"clip.model=local-dir:{kit['open-clip']}", *extra],
        )
        with pytest.raises(ConfigError) as caught:
            preflight(config, list(stages))
        return str(caught.value)

    message = problems(flux, "generate.negative_prompt=blurry")  # and offline.yaml's 7.5
    assert message.splitlines() == [
        f"generate.guidance_scale: 7.5 is ignored by FluxPipeline ({flux}): it takes no "
        "guidance (leave it out)",
        f"generate.negative_prompt: FluxPipeline ({flux}) takes no negative prompt (its "
        "guidance is none); leave it out",
    ]
    assert problems(sd15, "generate.negative_prompt=blurry", "generate.guidance_scale=0",
                    stages=("prompts",)) == (
        "generate.negative_prompt: ignored at guidance_scale 0.0 (classifier-free guidance "
        "is on above 1); leave it out or raise generate.guidance_scale"
    )  # fmt: skip
    assert problems(sd15, "generate.components={text_encoder_9: null}").startswith(
        "generate.components: StableDiffusionPipeline has no component 'text_encoder_9'"
    )
    # a pipeline that is not text-to-image, and a folder that is no pipeline
    img2img = tmp_path / "img2img"
    shutil.copytree(sd15, img2img)
    index = json.loads((img2img / "model_index.json").read_text())
    (img2img / "model_index.json").write_text(
        json.dumps({**index, "_class_name": "StableDiffusionImg2ImgPipeline"})
    )
    assert problems(img2img) == (
        f"generate.model: {str(img2img)!r} is a StableDiffusionImg2ImgPipeline, not a "
        "text-to-image pipeline that AutoPipelineForText2Image loads"
    )
    (img2img / "model_index.json").unlink()
    assert "has no model_index.json" in problems(img2img)


@pytest.mark.slow
def test_template_longer_than_every_text_encoder_is_refused(
    tmp_path_factory: pytest.TempPathFactory, kit: dict[str, Path], tmp_path: Path
) -> None:
    sd15 = tiny_pipeline(tmp_path_factory, "sd15")
    long = "a photo of a {name} " + "with a very long description " * 14
    config = load_config(OFFLINE_CONFIG, [*overrides(sd15, kit, "sd15"),
                                          f"prompts.templates=[{json.dumps(long)}]"])  # fmt: skip
    run = RunDir(tmp_path / "run")
    with pytest.raises(
        ConfigError,
        match=r"prompts.templates: .* is \d+ tokens, longer than "
        r"the text encoders read \(77 tokens of CLIPTokenizer\)",
    ):
        run_stages(config, run, stages=["classes", "prompts"])
    assert not run.prompts.exists()


def _killed_runs(folder: Path, tmp_path_factory: pytest.TempPathFactory,
                 kit: dict[str, Path]) -> None:  # fmt: skip
    """Per architecture, a run killed in its second shard (`ARCH/killed/`) and the same run
    made without interruption (`ARCH/whole/`), all made by one helper process
    (diversynth.testing.kill_driver) from one classes-and-prompts run (templates only: the same
    prompts for every model)."""
    base = RunDir(folder / "base")
    sd15 = tiny_pipeline(tmp_path_factory, "sd15")
    run_stages(load_config(OFFLINE_CONFIG, overrides(sd15, kit, "sd15")), base,
               stages=["classes", "prompts"])  # fmt: skip
    jobs = []
    for arch in MATRIX:
        for copy in ("killed", "whole"):
            shutil.copytree(base.root, folder / arch / copy)
        jobs.append({"config": str(OFFLINE_CONFIG),
                     "settings": overrides(tiny_pipeline(tmp_path_factory, arch), kit, arch),
                     "killed": str(folder / arch / "killed"),
                     "whole": str(folder / arch / "whole")})  # fmt: skip
    (folder / "jobs.json").write_text(json.dumps(jobs))
    result = subprocess.run([sys.executable, "-m", "diversynth.testing.kill_driver",
                             str(folder / "jobs.json")], cwd=REPO, capture_output=True,
                            text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def _resumed_equals_whole(arch: str, folder: Path, model: Path, kit: dict[str, Path]) -> None:
    """The killed run, resumed: the uninterrupted run's bytes, read back by training."""
    from diversynth.run.artifacts.manifest import read_manifest
    from diversynth.stages.train.synthetic import synthetic_images

    whole, killed = RunDir(folder / arch / "whole"), RunDir(folder / arch / "killed")
    done = len(list(killed.shards.glob("*.json"))) - 1  # less the plan
    assert done == 1 and list(killed.shards.glob("000001.tar.*.tmp"))  # killed mid-shard
    run_stages(load_config(OFFLINE_CONFIG, overrides(model, kit, arch)), killed,
               stages=["generate"])  # fmt: skip
    summary = killed.read_state("generate").summary  # type: ignore[union-attr]
    assert summary["shards_generated"] == SHARDS - done and summary["images"] == 10
    for i in range(SHARDS):
        for suffix in ("tar", "rows.parquet"):
            name = f"{i:06d}.{suffix}"
            assert (killed.shards / name).read_bytes() == (whole.shards / name).read_bytes(), name
    assert killed.manifest.read_bytes() == whole.manifest.read_bytes()
    assert not list(killed.shards.glob("*.tmp"))
    # the training stage's reader: every image, 32 px, with its manifest label
    rows = read_manifest(killed.manifest, ["class_index", "clip_class"])
    assert rows.column("clip_class").null_count == 0  # CLIP scored every image
    images = synthetic_images(killed, num_real=100, scale=None, transform=lambda im: im)
    assert images is not None and len(images) == 10
    read = [images[i] for i in range(len(images))]
    assert {im.size for im, _ in read} == {(32, 32)}
    assert sorted(label for _, label in read) == sorted(rows.column("class_index").to_pylist())


@pytest.mark.slow
def test_every_architecture_generates_resumes_and_trains(
    tmp_path_factory: pytest.TempPathFactory, kit: dict[str, Path], tmp_path: Path
) -> None:
    """One test, not one per architecture: the runs come from one helper process, and a
    test per architecture would hold both test workers waiting for it."""
    _killed_runs(tmp_path, tmp_path_factory, kit)
    failures = []
    for arch in MATRIX:
        try:
            _resumed_equals_whole(arch, tmp_path, tiny_pipeline(tmp_path_factory, arch), kit)
        except AssertionError as exc:
            failures.append(f"{arch}: {exc}")
    assert not failures, "\n".join(failures)

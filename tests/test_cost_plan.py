"""`diversynth plan`: FLOPs counted on the real architectures (meta device), the run's counts,
disk and hours, and one clear line for a model it cannot price."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import OFFLINE_CONFIG, REPO
from safetensors.numpy import save_file

from diversynth.commands.plan import PlanError, count_architecture_flops, make_plan
from diversynth.config import GenerateConfig, load_config
from diversynth.models.released import RELEASED

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"


@pytest.mark.slow  # SD 1.5 built on the meta device twice: 10 s
def test_sd15_flops_match_the_measured_architecture() -> None:
    """803 GFLOP a UNet call (batch 1, 512 px) and about 2.5 TFLOP a VAE decode."""
    settings = GenerateConfig(model=SD15, steps=50, guidance_scale=7.5, height=512, width=512)
    parts = {p.name: p for p in count_architecture_flops(RELEASED[SD15], settings)}
    assert parts["unet"].flops == pytest.approx(803e9, rel=0.05)
    assert parts["unet"].calls == 100  # two calls a step with classifier-free guidance
    assert parts["vae"].flops == pytest.approx(2.5e12, rel=0.05)
    # guidance off (turbo-style): one call a step; 4x the pixels, more than 4x the FLOPs
    # (attention grows with the square of the latent tokens)
    off = GenerateConfig(model=SD15, steps=4, guidance_scale=0, height=1024, width=1024)
    parts_off = {p.name: p for p in count_architecture_flops(RELEASED[SD15], off)}
    assert parts_off["unet"].calls == 4 and parts_off["text_encoder"].calls == 1
    assert 4.5 < parts_off["unet"].flops / parts["unet"].flops < 7


@pytest.mark.slow  # FLUX.1 built on the meta device: 8 s
def test_plan_of_a_real_run_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the bundled configs of the released model
    config = load_config(REPO / "configs" / "imagenet-flux-schnell.yaml", [])
    plan = make_plan(config)
    assert (plan.classes, plan.prompts, plan.images) == (1000, 260_000, 1_300_000)
    assert plan.shards == 1300 and plan.llm_requests == 2000
    assert plan.pipeline == "FluxPipeline"
    names = [c.name for c in plan.components]
    assert names == ["transformer", "vae", "text_encoder", "text_encoder_2"]
    assert plan.components[0].calls == 4  # no guidance: one call a step
    assert 5e3 < plan.bytes_per_image < 1e5  # a 256 px JPEG
    assert set(plan.gpu_hours) >= {"H100", "H200"}
    # hours follow from FLOPs and the measured fraction of the H100's peak
    assert plan.gpu_hours["H100"] == pytest.approx(
        plan.images * plan.flops_per_image / (989e12 * 0.246) / 3600, rel=0.02
    )
    assert any("assumed the same for FluxTransformer2DModel" in n for n in plan.notes)


@pytest.mark.slow
def test_plan_command_prints_a_table_and_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command itself, run in this process (typer's runner): the table on stdout,
    --json, and one line for a model folder without configs."""
    from typer.testing import CliRunner

    from diversynth.commands.cli import app

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    config = str(REPO / "configs" / "imagenet-sd15.yaml")
    result = runner.invoke(app, ["plan", config, "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["pipeline"] == "StableDiffusionPipeline"
    unet = plan["components"][0]
    assert unet["name"] == "unet" and abs(unet["flops"] / 803e9 - 1) < 0.05
    result = runner.invoke(app, ["plan", config])
    assert result.exit_code == 0, result.output
    for row in ("images", "1,300,000", "GPU-hours", "H100", "803.3 GFLOP"):
        assert row in result.stdout

    # a model folder without config files: one line, before any work
    empty = tmp_path / "empty-model"
    empty.mkdir()
    save_file({}, str(empty / "model.safetensors"))  # weights, but no configs
    result = runner.invoke(app, ["plan", str(OFFLINE_CONFIG), "--set", f"generate.model={empty}"])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: plan: generate.model '{empty}' has no model_index.json: not a diffusers "
        "pipeline folder"
    ]


def test_a_plan_adds_up_what_each_stage_estimates() -> None:
    """Each stage declares its part (classes, prompts and images, LLM requests): the
    offline demo's 10 classes, 10 prompts of 2 images a class, a CD and an SD request a
    class, and a request a class more when the LLM names the classes."""
    from diversynth import pipeline

    config = load_config(OFFLINE_CONFIG, [])
    found = pipeline.estimate(config, through="prompts")
    assert (found.classes, found.prompts, found.images) == (10, 100, 200)
    assert found.images_by_strategy == {"naive": 40, "cd": 100, "sd": 60}
    assert found.llm_requests == 20 and found.llm_tokens_out == 20 * 180
    assert found.shards == 0 and found.training is None  # later stages not asked
    named = pipeline.estimate(load_config(OFFLINE_CONFIG, ["classes.disambiguate.llm=true"]),
                              through="prompts")  # fmt: skip
    assert named.llm_requests == 30 and named.llm_tokens_in > found.llm_tokens_in
    contexts = pipeline.estimate(load_config(OFFLINE_CONFIG, ["prompts.shares={cd: 1.0}"]),
                                 through="prompts")  # fmt: skip
    assert contexts.llm_requests == 10 and contexts.images_by_strategy["cd"] == 200


@pytest.mark.slow  # the classifier and the pipeline built on the meta device: 12 s
def test_plan_json_of_a_run_with_real_data() -> None:
    """`plan --json` of a config with a data section: the real images counted in
    data.root (its train_limit here) and the whole run's counts."""
    from typer.testing import CliRunner

    from diversynth.commands.cli import app

    result = CliRunner().invoke(app, ["plan", str(OFFLINE_CONFIG), "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert (plan["classes"], plan["images"], plan["shards"]) == (10, 200, 5)
    assert plan["training"]["real_images"] == 6000
    assert plan["training"]["real_source"] == "counted in data.root"


def test_plan_of_a_hub_model_it_cannot_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = load_config(OFFLINE_CONFIG, ["generate.model=someone/unknown-model"])
    with pytest.raises(PlanError, match="cannot read the configs of generate.model "
                                        "'someone/unknown-model'"):  # fmt: skip
        make_plan(config)


def test_a_known_hub_id_is_planned_from_its_bundled_configs_without_the_hub(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no hub reachable, asking it cost 37 s of retries before the bundled configs
    were used: a known id now goes to them at once (the hub here refuses at once too, so
    any request would show as retries in the time)."""
    import time

    from diversynth.commands.plan import architecture_configs

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    start = time.perf_counter()
    configs, source = architecture_configs("stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert time.perf_counter() - start < 1
    assert source == "released configs bundled with diversynth" and "unet" in configs


@pytest.mark.slow  # ResNet-50 on the meta device, twice: 6 s
def test_plan_prices_training_as_well_as_generation() -> None:
    """The ImageNet SD 1.5 config's ResNet-50 recipe (600 epochs, 176 px, batch 1024, half
    synthetic): FLOPs counted on the meta device, images seen step by step, and hours from
    the measured training rate, with the measured loader's rate as the upper end (the
    plan command's table: test_plan_of_a_sweep_prices_the_pool_and_every_training)."""
    from diversynth.models.cost import CARDS, IMAGENET_TRAIN, measured_rates, training_cost

    config = load_config(REPO / "configs" / "imagenet-sd15.yaml", [])
    cost = training_cost(config, 1000, CARDS, synthetic=True)
    assert cost.model == "resnet50" and cost.image_size == 176
    # ResNet-50: 4.1 GMACs at 224 px; forward and backward 3x; a multiply-add is 2 FLOPs
    assert cost.flops_per_image == pytest.approx(3 * 2 * 4.1e9 * (176 / 224) ** 2, rel=0.05)
    assert cost.real_images == IMAGENET_TRAIN and "assumed" in cost.real_source
    assert cost.images_seen == 600 * (IMAGENET_TRAIN // 512) * 1024  # 512 real a step
    low, high = cost.gpu_hours["H100"]
    rates = measured_rates()
    assert rates is not None
    expected = cost.images_seen * cost.flops_per_image / (rates["aux"] * rates["flops"]) / 3600
    assert low == pytest.approx(expected, rel=1e-6)
    assert 50 < low < high < 400  # model-bound and loader-bound hours
    assert any("measured on H100" in note for note in cost.notes)
    # real images only: whole steps of real images, and the rate without aux BN
    real_only = training_cost(config, 1000, CARDS, synthetic=False)
    assert real_only.images_seen == 600 * (IMAGENET_TRAIN // 1024) * 1024
    assert real_only.gpu_hours["H100"][0] < low


@pytest.mark.slow
def test_plan_of_a_sweep_prices_the_pool_and_every_training(tmp_path: Path) -> None:
    from conftest import cli

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"base: {REPO / 'configs' / 'imagenet-sd15.yaml'}\n"
        "vary:\n  train.synthetic_scale: [0, 1, 2, 4, 6]\n"
        "  train.strategies: [[naive], [cd], [sd], [naive, cd, sd]]\n  seed: [0, 1, 2]\n"
    )
    result = cli("plan", str(sweep), env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    # scale 0 trains once a seed for all four strategy sets: 3 + 4 x 4 x 3 = 51 trainings
    assert "sweep: 60 combinations, 51 trainings: GPU-hours" in out
    for row in ("pool(s): generation", "trainings", "total", "with synthetic_scale=6",
                "with strategies=[\"naive\",\"cd\",\"sd\"]", "with seed=2"):  # fmt: skip
        assert row in out, row
    assert "the pool is too small" in out and "train.synthetic_scale=6" in out

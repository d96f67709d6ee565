"""The offline kit: tiny models that load through the same path as hub models."""

from __future__ import annotations

from pathlib import Path

import torch

from diversynth.testing.tiny_models import make_tiny_models


def test_pipeline_loads_like_a_hub_model_and_is_deterministic(kit: dict[str, Path]) -> None:
    from diffusers import AutoPipelineForText2Image, StableDiffusionPipeline

    folder = kit["stable-diffusion"]
    assert (folder / "model_index.json").is_file()
    assert list(folder.rglob("*.safetensors")) and not list(folder.rglob("*.bin"))
    pipe = AutoPipelineForText2Image.from_pretrained(folder, use_safetensors=True)
    assert isinstance(pipe, StableDiffusionPipeline)
    pipe.set_progress_bar_config(disable=True)

    def images(seeds: list[int]) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        out = pipe(["a photo of a coat"] * len(seeds), num_inference_steps=2, height=64, width=64,
                   generator=gens, output_type="pt")  # fmt: skip
        return out.images

    first, again = images([1, 2]), images([1, 2])
    assert first.shape == (2, 3, 64, 64)
    # exact on every kernel set: the same operations on the same batch, in one process
    assert torch.equal(first, again)
    assert not torch.equal(first[0], first[1])


def test_clip_tokenizer_matches_open_clip(kit: dict[str, Path]) -> None:
    import open_clip
    from transformers import CLIPTokenizer

    hf = CLIPTokenizer.from_pretrained(kit["stable-diffusion"] / "tokenizer")
    oc = open_clip.get_tokenizer(f"local-dir:{kit['open-clip']}")
    for text in ["a photo of a crane (wading bird).", "Ankle boot, T-shirt/top!", "ünïcode façade"]:
        ids = hf(text).input_ids
        assert ids == oc([text])[0][: len(ids)].tolist()
    assert len(hf) == 49408


def test_open_clip_local_dir(kit: dict[str, Path]) -> None:
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{kit['open-clip']}")
    assert (kit["open-clip"] / "open_clip_model.safetensors").is_file()
    tokens = open_clip.get_tokenizer(f"local-dir:{kit['open-clip']}")(["a coat"])
    assert model.encode_text(tokens).shape == (1, 32)


def test_second_build_is_skipped(kit: dict[str, Path]) -> None:
    root = kit["stable-diffusion"].parent
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    make_tiny_models(root)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_a_folder_of_user_files_is_never_replaced(tmp_path: Path) -> None:
    """Both kits replace their folder whole: one holding other files is refused, untouched."""
    import pytest

    from diversynth.errors import UsageError
    from diversynth.testing.tiny_pipelines import save_tiny_pipeline

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for build in (lambda: make_tiny_models(mine), lambda: save_tiny_pipeline("sd15", mine)):
        with pytest.raises(UsageError, match="exists and is not a model kit"):
            build()
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert (mine / "notes.txt").read_text() == "keep me"

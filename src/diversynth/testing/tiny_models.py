"""Offline model kit: tiny random-weight models of real architectures, stored as hubs store them.

No text-to-image or CLIP weights can be had offline, so tests and the offline demo build
tiny models of the same classes (a diffusers `StableDiffusionPipeline`, an open_clip
`CLIP`) with random weights, save them with `save_pretrained` / the open_clip `local-dir:`
layout, and load them back through exactly the code path a user's hub model takes.
The CLIP tokenizer is real: built from the BPE vocabulary inside the open_clip wheel.
"""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from diversynth.errors import UsageError

KIT_VERSION = "2"
SD_DIR = "stable-diffusion"
CLIP_DIR = "open-clip"
EXEMPLARS_DIR = "exemplars"

# ImageNet classes for the exemplar folder: the pairs that share a name (crane, maillot,
# cardigan, missile/projectile), names a text-to-image model misreads, and a few plain ones.
EXEMPLAR_WNIDS = [
    "n01440764", "n01608432", "n01847000", "n01871265", "n02012849", "n02113186",
    "n02123045", "n02123159", "n02276258", "n02963159", "n03126707", "n03710637",
    "n03710721", "n03773504", "n04008634", "n04355933", "n04356056", "n07753592",
    "n09472597", "n02690373",
]  # fmt: skip
EXEMPLARS_PER_CLASS = 3

# Tiny open_clip model: same CLIP class as ViT-B-32, a few thousand times smaller.
TINY_OPEN_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def _bpe_vocab_path() -> Path:
    import open_clip.tokenizer

    return Path(open_clip.tokenizer.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"


def write_clip_tokenizer_files(folder: Path) -> None:
    """vocab.json and merges.txt for transformers' CLIPTokenizer, from open_clip's BPE file.

    The vocabulary is built the way CLIP's own SimpleTokenizer builds it (byte symbols,
    their end-of-word forms, the first 48,894 merges, two special tokens): 49,408 ids, the
    same as the released CLIP models.
    """
    from open_clip.tokenizer import bytes_to_unicode

    with gzip.open(_bpe_vocab_path(), "rt", encoding="utf-8") as handle:
        merges = handle.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    pairs = [tuple(line.split()) for line in merges]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(pair) for pair in pairs]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def build_tiny_sd_pipeline(seed: int = 0, tokenizer_dir: Path | None = None) -> Any:
    """A StableDiffusionPipeline with tiny random weights (64 px images, 32-channel UNet)."""
    # Any, as tiny_pipelines' builders: mypy takes diffusers' top-level names for its dummies
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            hidden_size=32,
            intermediate_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=49408,
            max_position_embeddings=77,
            projection_dim=32,
        )
    )
    if tokenizer_dir is None:
        raise ValueError("tokenizer_dir is required: write_clip_tokenizer_files() makes one")
    tokenizer = CLIPTokenizer(
        str(tokenizer_dir / "vocab.json"),
        str(tokenizer_dir / "merges.txt"),
        pad_token="<|endoftext|>",
        model_max_length=77,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_open_clip(folder: Path, seed: int = 0) -> None:
    """A tiny open_clip CLIP in the `local-dir:` layout (config JSON + safetensors)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_OPEN_CLIP_CFG)
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": TINY_OPEN_CLIP_CFG,
        "preprocess_cfg": {
            "mean": list(open_clip.OPENAI_DATASET_MEAN),
            "std": list(open_clip.OPENAI_DATASET_STD),
        },
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))


def save_tiny_exemplars(root: Path, seed: int = 0) -> None:
    """An ImageNet-layout folder (`train/WNID/*.png`) of tiny noise images, one tint per
    class: real files for the exemplar path of the classes stage, with no meaning."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for wnid in EXEMPLAR_WNIDS:
        folder = root / "train" / wnid
        folder.mkdir(parents=True, exist_ok=True)
        tint = rng.integers(0, 256, size=3)
        for i in range(EXEMPLARS_PER_CLASS):
            noise = rng.integers(-40, 41, size=(32, 32, 3))
            pixels = np.clip(tint + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{wnid}_{i}.png")


def refuse_foreign_folder(folder: Path, marker: str) -> None:
    """A kit replaces its folder whole: refuse one that holds anything but an earlier kit
    (which has `marker`, a file only a kit has), rather than delete a user's files."""
    if not folder.exists() and not folder.is_symlink():
        return
    if (
        folder.is_symlink()
        or not folder.is_dir()
        or (any(folder.iterdir()) and not (folder / marker).exists())
    ):
        raise UsageError(f"{str(folder)!r} exists and is not a model kit: give a new or empty "
                         "folder (it is replaced whole)")  # fmt: skip


def staging_folder(out: Path) -> Path:
    """A new folder beside `out` to build a kit in, then renamed to `out`: made here, so
    never a folder of the user's (a fixed name such as OUT.partial could be one)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))


def make_tiny_models(out: Path, force: bool = False) -> dict[str, Path]:
    """Write the kit under `out`; skipped when a kit of this version is already there."""
    out = Path(out)
    refuse_foreign_folder(out, "KIT_VERSION")
    paths = {
        "stable-diffusion": out / SD_DIR,
        "open-clip": out / CLIP_DIR,
        "exemplars": out / EXEMPLARS_DIR,
    }
    marker = out / "KIT_VERSION"
    if not force and marker.is_file() and marker.read_text().strip() == KIT_VERSION:
        if all(p.is_dir() for p in paths.values()):
            return paths
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()  # "Writing model shards" of the encoder
    staging = staging_folder(out)
    tokenizer_dir = staging / "tokenizer-src"
    write_clip_tokenizer_files(tokenizer_dir)
    pipeline = build_tiny_sd_pipeline(tokenizer_dir=tokenizer_dir)
    pipeline.save_pretrained(staging / SD_DIR, safe_serialization=True)
    save_tiny_open_clip(staging / CLIP_DIR)
    save_tiny_exemplars(staging / EXEMPLARS_DIR)
    shutil.rmtree(tokenizer_dir)
    (staging / "KIT_VERSION").write_text(KIT_VERSION + "\n")
    # Swap in whole, so an interrupted build never leaves a half kit under `out`.
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return paths

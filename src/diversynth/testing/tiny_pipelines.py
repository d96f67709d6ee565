"""Tiny random-weight text-to-image pipelines of every architecture the generate stage runs.

Each is built from configs (the way diffusers' own tests build them), saved with
`save_pretrained` as the hub stores the released model (tokenizers included), and loaded
back through `AutoPipelineForText2Image.from_pretrained`: the same classes, text encoders,
token limits and guidance rules as the released models, a few megabytes each.

Tokenizers are real tokenizer files. CLIP's is built from the BPE vocabulary in the
open_clip wheel (modelkit.write_clip_tokenizer_files); no T5 or Gemma vocabulary exists
offline, so those are word-level vocabularies of the ImageNet lemmas (from the timm wheel)
with the special tokens and end markers of the real ones: a word outside it reads as
<unk>, which a random-weight encoder cannot tell apart anyway.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from diversynth.testing.tiny_models import (
    refuse_foreign_folder,
    staging_folder,
    write_clip_tokenizer_files,
)

CLIP_VOCAB = 49408
TINY_SIZE = 32  # px: every tiny pipeline makes 32x32 images


@lru_cache(maxsize=1)
def _lemma_words() -> list[str]:
    """The words of ImageNet's class lemmas, sorted: the same list on every machine."""
    import timm.data

    info = Path(timm.data.__file__).parent / "_info" / "imagenet_synset_to_lemma.txt"
    words = set()
    for line in info.read_text().splitlines():
        words.update(re.findall(r"[a-z0-9]+", line.partition("\t")[2].lower()))
    words.update("a an the of in on at with photo picture painting sketch".split())
    return sorted(words)


def _word_tokenizer(specials: list[str], unk: str, template: str) -> Any:
    """A word-level `tokenizers.Tokenizer`: specials first, then the lemma words."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(specials)}
    for word in _lemma_words():
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    marks = [(s, vocab[s]) for s in specials if s in template]
    tokenizer.post_processor = processors.TemplateProcessing(single=template,
                                                             special_tokens=marks)  # fmt: skip
    return tokenizer


def t5_tokenizer(max_length: int = 512) -> Any:
    """A T5TokenizerFast (pad 0, end 1, unk 2, a Unigram model on SentencePiece's word
    marks, as T5's) over the lemma words."""
    # transformers 5 serves *TokenizerFast names at run time without declaring them; 4.x
    # (pyproject allows >=4.44) has the class itself
    from transformers import T5TokenizerFast  # type: ignore[attr-defined]

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + word, -8.0) for word in _lemma_words()]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=max_length)


def gemma_tokenizer() -> Any:
    """A GemmaTokenizerFast (pad 0, eos 1, bos 2, unk 3, as Gemma's), padding on the right
    as Sana's pipeline expects."""
    # declared in transformers 4.x only, served at run time by 5 (as T5TokenizerFast)
    from transformers import GemmaTokenizerFast  # type: ignore[attr-defined]

    obj = _word_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>"], "<unk>", "<bos> $A")
    return GemmaTokenizerFast(tokenizer_object=obj, pad_token="<pad>", eos_token="<eos>",
                              bos_token="<bos>", unk_token="<unk>", padding_side="right",
                              model_max_length=8192)  # fmt: skip


def _clip_tokenizer(folder: Path) -> Any:
    from transformers import CLIPTokenizer

    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                         pad_token="<|endoftext|>", model_max_length=77)  # fmt: skip


def _clip_text(with_projection: bool = False, hidden: int = 32) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
                            hidden_size=hidden, intermediate_size=37, num_attention_heads=4,
                            num_hidden_layers=2, vocab_size=CLIP_VOCAB,
                            max_position_embeddings=77, projection_dim=32,
                            hidden_act="gelu")  # fmt: skip
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _t5_encoder() -> Any:
    from transformers import T5Config, T5EncoderModel

    vocab = len(t5_tokenizer())
    return T5EncoderModel(T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=37, num_layers=2,
                                   num_heads=4, relative_attention_num_buckets=8,
                                   pad_token_id=0, eos_token_id=1))  # fmt: skip


def _kl_vae(blocks: int = 2, latent: int = 4, **extra: Any) -> Any:
    """An AutoencoderKL with `blocks` levels: images are 2^(blocks-1) times the latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8,) * blocks, in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * blocks,
                         up_block_types=("UpDecoderBlock2D",) * blocks, latent_channels=latent,
                         norm_num_groups=8, sample_size=TINY_SIZE, layers_per_block=1,
                         **extra)  # fmt: skip


def _sd_unet(**extra: Any) -> Any:
    from diffusers import UNet2DConditionModel

    base = dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=TINY_SIZE // 2,
                in_channels=4, out_channels=4, down_block_types=("DownBlock2D",
                "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)  # fmt: skip
    return UNet2DConditionModel(**{**base, **extra})


def _ddpm_betas() -> dict[str, Any]:
    return dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                steps_offset=1)  # fmt: skip


def _sd15(tok: Path) -> Any:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        unet=_sd_unet(), vae=_kl_vae(), text_encoder=_clip_text(), tokenizer=_clip_tokenizer(tok),
        scheduler=DDIMScheduler(**_ddpm_betas(), clip_sample=False, set_alpha_to_one=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def _sd2(tok: Path) -> Any:
    """SD 2.x: linear projections, per-level head sizes, a v-prediction scheduler."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = DDIMScheduler(**_ddpm_betas(), clip_sample=False, set_alpha_to_one=False,
                              prediction_type="v_prediction")  # fmt: skip
    return StableDiffusionPipeline(
        unet=_sd_unet(attention_head_dim=(2, 4), use_linear_projection=True), vae=_kl_vae(),
        text_encoder=_clip_text(), tokenizer=_clip_tokenizer(tok), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def _sdxl_parts(tok: Path) -> dict[str, Any]:
    """SDXL: two CLIP text encoders (hidden states side by side), size conditioning."""
    unet = _sd_unet(
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64,
    )
    return dict(unet=unet, vae=_kl_vae(), text_encoder=_clip_text(), tokenizer=_clip_tokenizer(tok),
                text_encoder_2=_clip_text(with_projection=True),
                tokenizer_2=_clip_tokenizer(tok))  # fmt: skip


def _sdxl(tok: Path) -> Any:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    scheduler = EulerDiscreteScheduler(**_ddpm_betas(), timestep_spacing="leading")
    return StableDiffusionXLPipeline(**_sdxl_parts(tok), scheduler=scheduler)


def _sdxl_turbo(tok: Path) -> Any:
    """SDXL-Turbo's layout: SDXL with an ancestral Euler scheduler on trailing timesteps,
    run with guidance 0 and 1-4 steps."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline

    scheduler = EulerAncestralDiscreteScheduler(**_ddpm_betas(), timestep_spacing="trailing")
    return StableDiffusionXLPipeline(**_sdxl_parts(tok), scheduler=scheduler)


def _sd3(tok: Path) -> Any:
    """SD3: an MMDiT, two CLIPs with projections and a T5."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    transformer = SD3Transformer2DModel(sample_size=TINY_SIZE // 2, patch_size=1, in_channels=4,
                                        num_layers=1, attention_head_dim=8,
                                        num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=32, pooled_projection_dim=64,
                                        out_channels=4)  # fmt: skip
    vae = _kl_vae(use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
                  scaling_factor=1.5035)  # fmt: skip
    return StableDiffusion3Pipeline(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=_clip_text(True), tokenizer=_clip_tokenizer(tok),
        text_encoder_2=_clip_text(True), tokenizer_2=_clip_tokenizer(tok),
        text_encoder_3=_t5_encoder(), tokenizer_3=t5_tokenizer(256),
    )  # fmt: skip


def _pixart_sigma(tok: Path) -> Any:
    """PixArt-Sigma: a DiT with T5 cross-attention (300 tokens)."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    transformer = PixArtTransformer2DModel(
        sample_size=TINY_SIZE // 2,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    return PixArtSigmaPipeline(transformer=transformer, vae=_kl_vae(),
                               scheduler=DPMSolverMultistepScheduler(),
                               text_encoder=_t5_encoder(), tokenizer=t5_tokenizer(300))  # fmt: skip


def _flux_schnell(tok: Path) -> Any:
    """FLUX.1-schnell's layout: no guidance embedding (guidance-distilled to 1-4 steps),
    CLIP for the pooled vector, T5 for the sequence."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1,
                                         num_single_layers=1, attention_head_dim=16,
                                         num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
                                         guidance_embeds=False)  # fmt: skip
    vae = _kl_vae(latent=1, use_quant_conv=False, use_post_quant_conv=False,
                  shift_factor=0.0609, scaling_factor=1.5035)  # fmt: skip
    return FluxPipeline(transformer=transformer, vae=vae,
                        scheduler=FlowMatchEulerDiscreteScheduler(),
                        text_encoder=_clip_text(), tokenizer=_clip_tokenizer(tok),
                        text_encoder_2=_t5_encoder(), tokenizer_2=t5_tokenizer(512))  # fmt: skip


def _sana(tok: Path) -> Any:
    """Sana: a linear-attention DiT, a deep-compression autoencoder, Gemma 2 as encoder."""
    from diffusers import (
        AutoencoderDC,
        FlowMatchEulerDiscreteScheduler,
        SanaPipeline,
        SanaTransformer2DModel,
    )
    from transformers import Gemma2Config, Gemma2Model

    transformer = SanaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        num_attention_heads=2,
        attention_head_dim=4,
        num_cross_attention_heads=2,
        cross_attention_head_dim=4,
        cross_attention_dim=8,
        caption_channels=8,
        sample_size=TINY_SIZE // 2,
    )
    vae = AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=2,
                        encoder_block_types=("ResBlock", "EfficientViTBlock"),
                        decoder_block_types=("ResBlock", "EfficientViTBlock"),
                        encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                        encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
                        encoder_layers_per_block=(1, 1), decoder_layers_per_block=[1, 1],
                        downsample_block_type="conv", upsample_block_type="interpolate",
                        decoder_norm_types="rms_norm", decoder_act_fns="silu",
                        scaling_factor=0.41407)  # fmt: skip
    tokenizer = gemma_tokenizer()
    # attn_implementation: taken at run time (PreTrainedConfig's keyword arguments), left
    # out of the signature transformers 5 declares for its config dataclasses
    config = Gemma2Config(  # type: ignore[call-arg]
        head_dim=16, hidden_size=8, intermediate_size=64, max_position_embeddings=8192,
        num_attention_heads=2, num_hidden_layers=1, num_key_value_heads=2,
        vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1, bos_token_id=2,
        attn_implementation="eager",
    )  # fmt: skip
    encoder = Gemma2Model(config)
    return SanaPipeline(transformer=transformer, vae=vae,
                        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
                        text_encoder=encoder, tokenizer=tokenizer)  # fmt: skip


# in a pipeline folder written by save_tiny_pipeline, which alone it replaces
TINY_MARKER = ".diversynth-tiny-pipeline"

# name -> builder; the names are the architectures `generate` is tested with
ARCHITECTURES: dict[str, Callable[[Path], Any]] = {
    "sd15": _sd15, "sd2": _sd2, "sdxl": _sdxl, "sdxl-turbo": _sdxl_turbo, "sd3": _sd3,
    "pixart-sigma": _pixart_sigma, "flux-schnell": _flux_schnell, "sana": _sana,
}  # fmt: skip


def save_tiny_pipeline(arch: str, folder: Path, seed: int = 0,
                       drop: tuple[str, ...] = ()) -> Path:  # fmt: skip
    """Build architecture `arch` with random weights (seeded) and save it to `folder` as
    the hub stores it; `drop` names components saved as left out (`text_encoder_3`: SD3
    without its T5, diffusers' documented memory saving)."""
    import diffusers
    import torch
    import transformers

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    folder = Path(folder)
    # every pipeline folder has a model_index.json: only one this function wrote is replaced
    refuse_foreign_folder(folder, TINY_MARKER)
    staging = staging_folder(folder)
    write_clip_tokenizer_files(staging / "tokenizer-src")
    torch.manual_seed(seed)
    pipe = ARCHITECTURES[arch](staging / "tokenizer-src")
    for name in drop:
        pipe.register_modules(**{name: None})
    pipe.save_pretrained(staging / "pipeline", safe_serialization=True)
    (staging / "pipeline" / TINY_MARKER).write_text(f"tiny random-weight {arch} pipeline\n")
    shutil.rmtree(folder, ignore_errors=True)
    (staging / "pipeline").rename(folder)
    shutil.rmtree(staging)
    return folder

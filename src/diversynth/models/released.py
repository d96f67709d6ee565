"""The architecture configs of released text-to-image models, for `diversynth plan` offline.

`plan` reads a model's own configs (a local folder, or the hub when it can be reached);
these are the settings of the released models' config files that differ from the diffusers
and transformers class defaults, so that a plan for a hub id can be made on a machine with
no hub. Weights are never involved: the planner builds the architecture on the meta device.
"""

from __future__ import annotations

from typing import Any

_CLIP_L = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
    "vocab_size": 49408,
    "hidden_act": "quick_gelu",
    "model_type": "clip_text_model",
}
_CLIP_BIG_G = {**_CLIP_L, "hidden_size": 1280, "intermediate_size": 5120,
               "num_attention_heads": 20, "num_hidden_layers": 32, "projection_dim": 1280,
               "hidden_act": "gelu"}  # fmt: skip
_T5_XXL = {"d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24,
           "vocab_size": 32128, "feed_forward_proj": "gated-gelu", "model_type": "t5"}  # fmt: skip
_SD_VAE = {"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2,
           "down_block_types": ["DownEncoderBlock2D"] * 4,
           "up_block_types": ["UpDecoderBlock2D"] * 4, "latent_channels": 4,
           "sample_size": 512}  # fmt: skip
_CLIP_TOKENIZER = {"model_max_length": 77}

# hub id -> {component: (library, class, config)}; "_class_name" -> the pipeline class
RELEASED: dict[str, dict[str, Any]] = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": {
        "_class_name": "StableDiffusionPipeline",
        "unet": (
            "diffusers",
            "UNet2DConditionModel",
            {"cross_attention_dim": 768, "attention_head_dim": 8, "sample_size": 64},
        ),
        "vae": ("diffusers", "AutoencoderKL", _SD_VAE),
        "text_encoder": ("transformers", "CLIPTextModel", _CLIP_L),
        "tokenizer": ("transformers", "CLIPTokenizer", _CLIP_TOKENIZER),
    },
    "stabilityai/sdxl-turbo": {
        "_class_name": "StableDiffusionXLPipeline",
        "unet": (
            "diffusers",
            "UNet2DConditionModel",
            {
                "sample_size": 64,
                "block_out_channels": [320, 640, 1280],
                "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                "transformer_layers_per_block": [1, 2, 10],
                "attention_head_dim": [5, 10, 20],
                "cross_attention_dim": 2048,
                "addition_embed_type": "text_time",
                "addition_time_embed_dim": 256,
                "projection_class_embeddings_input_dim": 2816,
                "use_linear_projection": True,
                "layers_per_block": 2,
            },
        ),
        "vae": ("diffusers", "AutoencoderKL", _SD_VAE),
        "text_encoder": ("transformers", "CLIPTextModel", _CLIP_L),
        "text_encoder_2": ("transformers", "CLIPTextModelWithProjection", _CLIP_BIG_G),
        "tokenizer": ("transformers", "CLIPTokenizer", _CLIP_TOKENIZER),
        "tokenizer_2": ("transformers", "CLIPTokenizer", _CLIP_TOKENIZER),
    },
    "black-forest-labs/FLUX.1-schnell": {
        "_class_name": "FluxPipeline",
        # FluxTransformer2DModel's defaults are FLUX.1's: 19 double and 38 single blocks
        "transformer": ("diffusers", "FluxTransformer2DModel", {"guidance_embeds": False}),
        "vae": (
            "diffusers",
            "AutoencoderKL",
            {
                **_SD_VAE,
                "latent_channels": 16,
                "use_quant_conv": False,
                "use_post_quant_conv": False,
                "sample_size": 1024,
            },
        ),
        "text_encoder": ("transformers", "CLIPTextModel", _CLIP_L),
        "text_encoder_2": ("transformers", "T5EncoderModel", _T5_XXL),
        "tokenizer": ("transformers", "CLIPTokenizer", _CLIP_TOKENIZER),
        "tokenizer_2": ("transformers", "T5TokenizerFast", {"model_max_length": 512}),
    },
}
RELEASED["runwayml/stable-diffusion-v1-5"] = RELEASED["stable-diffusion-v1-5/stable-diffusion-v1-5"]

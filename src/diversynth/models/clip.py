"""CLIP scoring with open_clip: cosine similarity of images against texts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from diversynth.config import ClipConfig
from diversynth.errors import DiversynthError
from diversynth.models.safe_weights import loading
from diversynth.models.device import pick_device


class ClipLoadError(DiversynthError):
    pass


@dataclass
class ClipScorer:
    model: Any
    preprocess: Any
    tokenizer: Any
    device: torch.device

    @classmethod
    def load(cls, config: ClipConfig) -> ClipScorer:
        import open_clip

        device = pick_device(config.device, "clip.device")
        with loading("clip.model", config.model, ClipLoadError):
            model, _, preprocess = open_clip.create_model_and_transforms(
                config.model, pretrained=config.pretrained, device=device
            )
            tokenizer = open_clip.get_tokenizer(config.model)
        model.eval()
        return cls(model, preprocess, tokenizer, device)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        features = self.model.encode_text(self.tokenizer(texts).to(self.device))
        return torch.nn.functional.normalize(features.float(), dim=-1)

    @torch.inference_mode()
    def encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        batch = torch.stack([self.preprocess(image.convert("RGB")) for image in images])
        features = self.model.encode_image(batch.to(self.device))
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def pair_scores(self, images: list[Image.Image], texts: list[str]) -> list[float]:
        """Cosine similarity of image i with text i."""
        return self.embedded_pair_scores(self.encode_images(images), texts)

    def embedded_pair_scores(self, images: torch.Tensor, texts: list[str]) -> list[float]:
        """pair_scores for images already encoded (encode_images)."""
        sims = (images * self.encode_texts(texts)).sum(dim=-1)
        return [round(float(s), 6) for s in sims]

"""Training images decoded and augmented on the training device (`train.decode_on: device`).

On a GPU node the loader workers' JPEG decode is the bottleneck: 14 workers deliver about
1,500 images/s where a ResNet-50 takes 3,600. On this path a worker decodes no JPEG: it
reads the file's bytes and draws the image's crop box and flip with the image's own seed,
by the very calls (timm's `RandomResizedCropAndInterpolation.get_params` on the image's
size, read from the JPEG header, then the flip's `torch.rand`) of the CPU path, so both
paths crop and flip an image alike and a resumed run sees the same images. The training
process decodes each batch in one call (nvJPEG on a GPU), crops, resizes, flips and
normalises on the device. Images that are not plain JPEG files (Fashion-MNIST arrays, PNGs,
CMYK JPEGs) are decoded in the worker, which is cheap for them, and cropped on the device
alike. Pixels differ from the CPU path's only by resampling and JPEG decoding (torch's
antialiased resize against PIL's, nvJPEG or libjpeg-turbo against Pillow's).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from timm.data.transforms import RandomResizedCropAndInterpolation
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from diversynth.config import AugmentConfig, TrainConfig
from diversynth.stages.train.data import SeededSamples, SizedDataset, model_preprocessing


class EncodedImage(NamedTuple):
    """One image as a worker hands it over."""

    data: torch.Tensor  # uint8: the JPEG file's bytes, or decoded pixels flattened
    shape: tuple[int, int, int]  # the decoded pixels' (3, H, W); (0, 0, 0) for JPEG bytes
    box: tuple[int, int, int, int, int]  # crop top, left, height, width; flip (0 or 1)


class EncodedSamples(Dataset):
    """(EncodedImage, class index) for each image of a dataset that has `raw(i)` (the file's
    bytes or an array's pixels) and `labels`: ShardImages, ListedImages, ArrayImages.
    Called under the image's seed (SeededSamples), like the CPU path's transform."""

    def __init__(self, images: Any, augment: AugmentConfig) -> None:
        self.images, self.labels = images, images.labels
        self.scale, self.ratio = tuple(augment.scale), tuple(augment.ratio)
        self.hflip = augment.hflip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[EncodedImage, int]:
        raw = self.images.raw(i)
        if isinstance(raw, np.ndarray):
            image = Image.fromarray(raw)
        else:
            image = Image.open(io.BytesIO(raw))  # lazy: the header only, for size and mode
        # the CPU path's random calls in its order: the crop from Python's generator, then
        # RandomHorizontalFlip's torch.rand(1), which timm adds only when hflip > 0
        top, left, height, width = RandomResizedCropAndInterpolation.get_params(
            image, self.scale, self.ratio
        )
        flip = self.hflip > 0 and bool(torch.rand(1) < self.hflip)
        box = (top, left, height, width, int(flip))
        if isinstance(raw, bytes) and image.format == "JPEG" and image.mode in ("L", "RGB"):
            return EncodedImage(torch.frombuffer(bytearray(raw), dtype=torch.uint8),
                                (0, 0, 0), box), int(self.labels[i])  # fmt: skip
        pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
        shape = (3, pixels.shape[1], pixels.shape[2])
        return EncodedImage(pixels.flatten(), shape, box), int(self.labels[i])


@dataclass
class EncodedBatch:
    """A batch's images end to end in one buffer (one shared-memory transfer from a worker,
    not one per image), with where each lies and its crop."""

    data: torch.Tensor  # uint8, every image's EncodedImage.data in batch order
    lengths: list[int]
    shapes: list[tuple[int, int, int]]
    boxes: list[tuple[int, int, int, int, int]]

    def __len__(self) -> int:
        return len(self.lengths)

    def pin_memory(self) -> EncodedBatch:
        """DataLoader's pin_memory: the buffer only (decoded pixels go to the GPU from it)."""
        return replace(self, data=self.data.pin_memory())


def collate_encoded(
    samples: list[tuple[EncodedImage, int, bool]],
) -> tuple[EncodedBatch, torch.Tensor, torch.Tensor]:
    """DataLoader's collate_fn for SeededSamples over EncodedSamples: (EncodedBatch, class
    indices, whether each image is synthetic), as the CPU path's (images, ...) are."""
    images = [image for image, _, _ in samples]
    batch = EncodedBatch(
        data=torch.cat([image.data for image in images]),
        lengths=[image.data.numel() for image in images],
        shapes=[image.shape for image in images],
        boxes=[image.box for image in images],
    )
    labels = torch.tensor([label for _, label, _ in samples], dtype=torch.int64)
    return batch, labels, torch.tensor([synthetic for _, _, synthetic in samples])


class DeviceAugment:
    """The training process's half: an EncodedBatch to the normalised (N, 3, S, S) float
    batch the CPU path's transform gives, computed on `device`."""

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        prep = model_preprocessing(cfg)
        self.device, self.size = device, [cfg.image_size, cfg.image_size]
        # nvJPEG on CUDA; torchvision decodes on no other accelerator
        self.decode_device = device if device.type == "cuda" else torch.device("cpu")
        self.interpolation = InterpolationMode(cfg.augment.interpolation)
        # as timm's Normalize holds them: float32 tensors of the model's mean and std
        self.mean = torch.tensor(prep["mean"]).view(1, 3, 1, 1).to(device)
        self.std = torch.tensor(prep["std"]).view(1, 3, 1, 1).to(device)

    def __call__(self, batch: EncodedBatch) -> torch.Tensor:
        parts = batch.data.split(batch.lengths)
        jpegs = [k for k, shape in enumerate(batch.shapes) if shape[0] == 0]
        images: list[torch.Tensor | None] = [None] * len(batch)
        for k, decoded in zip(jpegs, self._decode([parts[k] for k in jpegs]), strict=True):
            images[k] = decoded
        for k, shape in enumerate(batch.shapes):
            if shape[0]:
                images[k] = parts[k].view(shape).to(self.device, non_blocking=True)
        crops = []
        for image, (top, left, height, width, _) in zip(images, batch.boxes, strict=True):
            assert image is not None
            crop = F.resized_crop(image, top, left, height, width, self.size,
                                  interpolation=self.interpolation, antialias=True)  # fmt: skip
            crops.append(crop)
        x = torch.stack(crops)
        flips = torch.tensor([box[4] == 1 for box in batch.boxes]).to(self.device)
        x = torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)  # one kernel, not one an image
        # ToTensor's and Normalize's arithmetic, in their order
        return x.float().div(255).sub_(self.mean).div_(self.std)

    def _decode(self, jpegs: list[torch.Tensor]) -> list[torch.Tensor]:
        """JPEG bytes to RGB uint8 (3, H, W) on the device, the whole batch in one call."""
        from torchvision.io import ImageReadMode, decode_jpeg

        if not jpegs:
            return []
        if self.decode_device.type == "cuda":
            # nvJPEG's hardware decoder writes its outputs without waiting for the work
            # queued on the caller's stream, into blocks the caching allocator may have
            # freed from that work (pytorch/vision#9606): let that work finish first. The
            # loop waits for every step's loss anyway, and the decode returns synchronised
            torch.cuda.current_stream(self.decode_device).synchronize()
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its decoders for TorchCodec's (not installed here)
            warnings.filterwarnings("ignore", "The image decoding and encoding capabilities",
                                    DeprecationWarning)  # fmt: skip
            decoded = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=self.decode_device)
        return [image.to(self.device, non_blocking=True) for image in decoded]


def loader_parts(real: SizedDataset, synthetic: SizedDataset | None, cfg: TrainConfig,
                 device: torch.device) -> tuple[SeededSamples, Callable | None,
                                                DeviceAugment | None]:  # fmt: skip
    """What a training DataLoader reads, its collate_fn (None: the default) and what turns
    its batches into the model's input on the device (None: the batches are that already),
    as `train.decode_on` says."""
    if cfg.decode_on != "device":
        return SeededSamples(real, synthetic), None, None
    encoded = None if synthetic is None else EncodedSamples(synthetic, cfg.augment)
    samples = SeededSamples(EncodedSamples(real, cfg.augment), encoded)
    return samples, collate_encoded, DeviceAugment(cfg, device)

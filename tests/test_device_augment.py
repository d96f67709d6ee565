"""`train.decode_on: device`: the workers hand over JPEG bytes with the crop box and flip
the CPU path draws for the same image and seed; the device's decode, crop, resize, flip
and normalisation come close to the CPU path's pixels; batches repeat exactly on a resume;
augmentations the device does not do are refused."""

from __future__ import annotations

import copy
import io
import pickle
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
import torchvision.transforms.functional as TF
from conftest import OFFLINE_CONFIG
from PIL import Image
from torch.utils.data import DataLoader

from diversynth.config import ConfigError, TrainConfig, load_config
from diversynth.data.real import ArrayImages, ListedImages, RealList
from diversynth.run.artifacts.shards import ShardWriter, encode_jpeg
from diversynth.stages.train.data import SeededSamples, model_preprocessing, train_transform
from diversynth.stages.train.device_augment import DeviceAugment, EncodedSamples, collate_encoded
from diversynth.stages.train.sampling import MixedBatches
from diversynth.stages.train.synthetic import ShardImages

ZOOM = {"scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3)}  # timm's own crop ranges
SIZES = [(48, 32), (32, 48), (40, 40), (64, 37), (30, 30), (96, 64)]  # (width, height)
Box = tuple[int, int, int, int, int]


def _smooth(rng: np.random.Generator, width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A smooth random picture: a wrong crop or a missed flip changes it a lot."""
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    return image.convert(mode)


def _shards(folder: Path, count: int) -> ShardImages:
    """`count` synthetic JPEGs of several sizes in one shard, read as training reads them."""
    rng = np.random.default_rng(0)
    writer, labels = ShardWriter(folder, "000000"), {}
    for k in range(count):
        key = f"img{k:04d}"
        labels[key] = k % 3
        writer.write(key, encode_jpeg(_smooth(rng, *SIZES[k % len(SIZES)]), 90, None),
                     {"class_index": labels[key]})  # fmt: skip
    rows = [{"key": key, "shard": "000000", "class_index": labels[key], "jpg_offset": offset,
             "jpg_size": size} for key, (offset, size) in writer.close().items()]  # fmt: skip
    writer.commit({})
    return ShardImages(folder, pa.Table.from_pylist(rows), transform=None)  # type: ignore[arg-type]


def _files(folder: Path) -> ListedImages:
    """Real image files: RGB and grey JPEGs (decoded on the device), a CMYK JPEG and PNGs
    (decoded in the worker)."""
    rng = np.random.default_rng(1)
    kinds = [("rgb.jpg", "RGB"), ("grey.jpg", "L"), ("cmyk.jpg", "CMYK"), ("rgb.png", "RGB"),
             ("grey.png", "L"), ("palette.png", "P")]  # fmt: skip
    for (name, mode), (width, height) in zip(kinds, SIZES, strict=False):
        _smooth(rng, width, height, mode).save(folder / name, quality=90)
    listing = RealList([name for name, _ in kinds], np.arange(len(kinds)) % 3)
    return ListedImages(folder, listing, transform=None)  # type: ignore[arg-type]


def _arrays(count: int) -> ArrayImages:
    """Fashion-MNIST-like grey 28 x 28 arrays."""
    rng = np.random.default_rng(2)
    images = np.stack([np.asarray(_smooth(rng, 28, 28, "L")) for _ in range(count)])
    return ArrayImages(images, np.arange(count) % 3, transform=None)  # type: ignore[arg-type]


def _config(**augment: object) -> TrainConfig:
    return TrainConfig(image_size=32, decode_on="device", augment=augment)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("device_augment")
    (folder / "shards").mkdir()
    (folder / "files").mkdir()
    return {"shards": _shards(folder / "shards", 24), "files": _files(folder / "files"),
            "arrays": _arrays(6)}  # fmt: skip


def _cpu_samples(images: Any, cfg: TrainConfig) -> SeededSamples:
    """The CPU path (decode_on: workers) over the same files, with the same settings."""
    cpu = copy.copy(images)
    cpu.transform = train_transform(cfg.model_copy(update={"decode_on": "workers"}))
    return SeededSamples(cpu, None)


def _pil(images: Any, index: int) -> Image.Image:
    """Image `index` as the CPU path opens it, before its transform."""
    if isinstance(images, ArrayImages):
        return Image.fromarray(images.raw(index))
    return Image.open(io.BytesIO(images.raw(index)))


@pytest.mark.parametrize("kind", ["shards", "files", "arrays"])
def test_crop_box_and_flip_are_the_cpu_paths(datasets: dict[str, Any], kind: str) -> None:
    """For each image and seed the worker's box and flip, applied to the image with PIL as
    timm does, give the CPU path's tensor bit for bit; JPEGs (but the CMYK one) stay
    encoded, the rest is decoded in the worker."""
    cfg = _config(**ZOOM, interpolation="bilinear")
    images = datasets[kind]
    cpu = _cpu_samples(images, cfg)
    encoded = SeededSamples(EncodedSamples(images, cfg.augment), None)
    prep = model_preprocessing(cfg)
    flips = 0
    for index in range(len(images)):
        pil = _pil(images, index)
        jpeg = pil.format == "JPEG" and pil.mode != "CMYK"
        for seed in (index, 10**6 + 3 * index, 2**61 + index):
            want, label, synthetic = cpu[(index, seed)]
            image, got_label, got_synthetic = encoded[(index, seed)]
            assert (got_label, got_synthetic) == (label, synthetic)
            if jpeg:
                assert image.shape == (0, 0, 0)
                assert image.data.numpy().tobytes() == images.raw(index)
            else:
                assert image.shape == (3, pil.height, pil.width), (kind, index)
            top, left, height, width, flip = image.box
            flips += flip
            crop = TF.resized_crop(pil.convert("RGB"), top, left, height, width, [32, 32],
                                   TF.InterpolationMode.BILINEAR)  # fmt: skip
            crop = TF.hflip(crop) if flip else crop
            again = TF.normalize(TF.to_tensor(crop), prep["mean"], prep["std"])
            assert torch.equal(again, want), (kind, index, seed)
    assert 0 < flips < 3 * len(images)  # both ways drawn


def _shifted(box: Box, image: Image.Image) -> Box:
    """The box two pixels to the side (or up or down when it spans the width); the same
    box when it is the whole image."""
    top, left, height, width, flip = box
    if width + 2 <= image.width:
        return top, left + 2 if left + width + 2 <= image.width else left - 2, height, width, flip
    if height + 2 <= image.height:
        return top + 2 if top + height + 2 <= image.height else top - 2, left, height, width, flip
    return box


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_device_tensors_are_close_to_the_cpu_paths(datasets: dict[str, Any],
                                                   interpolation: str) -> None:  # fmt: skip
    """torchvision's decode and antialiased resize against Pillow's: within a grey level on
    average over each image (after normalisation a level is about 0.017); a box two pixels
    off or a missed flip is far further."""
    cfg = _config(**ZOOM, interpolation=interpolation)
    augment = DeviceAugment(cfg, torch.device("cpu"))
    for kind, images in datasets.items():
        samples = [(i, 1000 + 7 * i) for i in range(len(images))]
        cpu = _cpu_samples(images, cfg)
        want = torch.stack([cpu[sample][0] for sample in samples])
        encoded = SeededSamples(EncodedSamples(images, cfg.augment), None)
        batch, _, _ = collate_encoded([encoded[sample] for sample in samples])
        got = augment(batch)
        assert got.shape == want.shape and got.dtype == torch.float32
        assert (got - want).abs().mean(dim=(1, 2, 3)).max() < 0.02, kind
        shifted = [_shifted(box, _pil(images, i)) for i, box in enumerate(batch.boxes)]
        unflipped = [(*box[:4], 1 - box[4]) for box in batch.boxes]
        for wrong in (shifted, unflipped):
            moved = torch.tensor([a != b for a, b in zip(wrong, batch.boxes, strict=True)])
            assert moved.sum() >= len(images) - 1
            off = (augment(replace(batch, boxes=wrong)) - want).abs().mean(dim=(1, 2, 3))
            assert off[moved].min() > 0.1, (kind, off)


def _batches(loader: DataLoader, augment: DeviceAugment) -> list[tuple[torch.Tensor, ...]]:
    return [(augment(x), y, synthetic) for x, y, synthetic in loader]


def test_batches_repeat_exactly_and_a_resumed_loader_continues_them(
    datasets: dict[str, Any],
) -> None:
    """Two loaders (workers or none) over the same batches give the same tensors bit for
    bit, and one started at a later micro-batch gives the later ones: the crops hang on
    (index, seed) alone."""
    cfg = _config(**ZOOM, interpolation="bicubic")
    # the shards without the file handles the tests before opened here: forked workers
    # would share their read offsets
    shards = pickle.loads(pickle.dumps(datasets["shards"]))
    real = EncodedSamples(datasets["arrays"], cfg.augment)
    synthetic = EncodedSamples(shards, cfg.augment)
    batches = MixedBatches(len(real), len(synthetic), real=2, synthetic=4, seed=5, epochs=2)
    augment = DeviceAugment(cfg, torch.device("cpu"))

    def loader(start: int, workers: int) -> DataLoader:
        return DataLoader(SeededSamples(real, synthetic), num_workers=workers,
                          batch_sampler=replace(batches, start=start),
                          collate_fn=collate_encoded)  # fmt: skip

    first = _batches(loader(0, 2), augment)
    assert len(first) == 6 and first[0][0].shape == (6, 3, 32, 32)
    assert first[0][2].tolist() == [False, False, True, True, True, True]
    again = _batches(loader(0, 0), augment)
    resumed = _batches(loader(4, 0), augment)
    for want, got in zip(first, again, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    for want, got in zip(first[4:], resumed, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
    assert not torch.equal(first[0][0], first[3][0])  # epoch 2 draws other crops


@pytest.mark.parametrize(("setting", "named"), [
    ("train.augment.color_jitter=0.4", "train.augment.color_jitter: 0.4"),
    ("train.augment.auto_augment=rand-m9-mstd0.5-inc1",
     "train.augment.auto_augment: rand-m9-mstd0.5-inc1"),
    ("train.augment.re_prob=0.25", "train.augment.re_prob: 0.25"),
    ("train.augment.interpolation=random", "train.augment.interpolation: random"),
])  # fmt: skip
def test_augmentations_the_device_does_not_do_are_refused(setting: str, named: str) -> None:
    with pytest.raises(ConfigError, match=f"train.decode_on: device .*{named}"):
        load_config(OFFLINE_CONFIG, ["train.decode_on=device", setting])
    load_config(OFFLINE_CONFIG, [setting])  # fine with the workers


def test_the_default_leaves_fingerprints_as_they_were() -> None:
    """decode_on: workers is not written out (the train stage's fingerprint of every config
    that does not set it is unchanged); device is, and changes it."""
    workers = load_config(OFFLINE_CONFIG, ["train.decode_on=workers"])
    assert "decode_on" not in workers.model_dump(mode="json")["train"]
    assert workers.model_dump() == load_config(OFFLINE_CONFIG).model_dump()
    device = load_config(OFFLINE_CONFIG, ["train.decode_on=device"])
    assert device.model_dump(mode="json")["train"]["decode_on"] == "device"


def test_training_decodes_on_the_device(run_copy: Path, kit_overrides: list[str]) -> None:
    """A short training run with decode_on: device (slow: it needs the finished offline
    run): real Fashion-MNIST arrays and synthetic JPEG shards, one loader worker."""
    import json

    from diversynth.pipeline import run_stages
    from diversynth.run.rundir import RunDir

    config = load_config(OFFLINE_CONFIG, [*kit_overrides, "data.train_limit=64",
                                          "train.batch_size=32", "train.epochs=1",
                                          "train.workers=1", "train.decode_on=device"])  # fmt: skip
    run_stages(config, RunDir(run_copy), stages=["train"])
    summary = json.loads((run_copy / ".state" / "train.json").read_text())["summary"]
    assert summary["steps"] == 2 and summary["synthetic_images"] == 16
    assert np.isfinite(summary["final_loss"])

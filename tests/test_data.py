"""Real data: Fashion-MNIST read in place, labels in the class list's order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diversynth.config import RealDataConfig
from diversynth.data.eval_sets import eval_transform
from diversynth.data.real import DataError, real_dataset

ROOT = Path("/usr/share/datasets/fashion-mnist")


def fashion_mnist(config: RealDataConfig, split: str, names: list[str], transform):
    """Fashion-MNIST through real_dataset, with a class list of these names in this order."""
    classes = [{"index": i, "raw_name": name} for i, name in enumerate(names)]
    return real_dataset(config, split, classes, transform)


def test_reads_debian_fashion_mnist() -> None:
    config = RealDataConfig(root=ROOT, train_limit=100)
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]  # fmt: skip
    data = fashion_mnist(config, "train", names, eval_transform({"image_size": 32}))
    assert len(data) == 100
    image, label = data[0]
    assert image.shape == (3, 32, 32) and 0 <= label < 10
    assert len(fashion_mnist(RealDataConfig(root=ROOT), "test", names, lambda x: x)) == 10_000


def test_labels_follow_the_class_list_not_the_dataset() -> None:
    config = RealDataConfig(root=ROOT, test_limit=None)
    ordered = fashion_mnist(config, "test", ["Bag", "Trouser"], lambda x: np.asarray(x))
    # only the two listed classes are kept, labelled 0 (Bag) and 1 (Trouser)
    assert len(ordered) == 2000 and set(ordered.labels.tolist()) == {0, 1}
    trousers = ordered.images[ordered.labels == 1].mean()
    bags = ordered.images[ordered.labels == 0].mean()
    assert trousers != bags  # different images behind the two labels
    swapped = fashion_mnist(config, "test", ["Trouser", "Bag"], lambda x: np.asarray(x))
    assert swapped.images[swapped.labels == 0].mean() == trousers


def test_unknown_class_is_a_clear_error() -> None:
    with pytest.raises(DataError, match=r"classes not in the real dataset: \['Crane'\]"):
        fashion_mnist(RealDataConfig(root=ROOT), "test", ["Bag", "Crane"], lambda x: x)


def test_imagefolder_labels_come_from_the_class_list(tmp_path: Path) -> None:
    """Folders named by wnid or by name, listed in another order than the class list."""
    from PIL import Image

    classes = [
        {"index": 0, "wnid": "n04254680", "raw_name": "soccer ball"},
        {"index": 1, "wnid": None, "raw_name": "Ankle boot"},
        {"index": 2, "wnid": "n01440764", "raw_name": "tench"},
    ]
    shades = {"n04254680": 10, "ankle boot": 120, "n01440764": 250, "unrelated": 60}
    for split, count in (("train", 3), ("val", 2)):
        for folder, shade in shades.items():
            (tmp_path / split / folder).mkdir(parents=True)
            for i in range(count):
                Image.new("L", (8, 8), shade).save(tmp_path / split / folder / f"{i}.png")
    config = RealDataConfig(format="imagefolder", root=tmp_path)
    train = real_dataset(config, "train", classes, lambda im: np.asarray(im.convert("L"))[0, 0])
    assert len(train) == 9  # the unrelated folder is skipped
    assert {label: int(pixel) for pixel, label in train} == {0: 10, 1: 120, 2: 250}
    test = real_dataset(config, "test", classes, lambda im: 0)
    assert sorted(label for _, label in test) == [0, 0, 1, 1, 2, 2]
    limited = RealDataConfig(format="imagefolder", root=tmp_path, train_limit=4)
    assert len(real_dataset(limited, "train", classes, lambda im: 0)) == 4

    with pytest.raises(DataError, match=r"no folder in .* for classes \['goldfish'\]"):
        real_dataset(config, "train", [*classes, {"index": 3, "raw_name": "goldfish"}], lambda x: x)

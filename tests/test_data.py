"""Real data: Fashion-MNIST read in place, labels in the class list's order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from diversynth.config import RealDataConfig
from diversynth.train.data import DataError, fashion_mnist, image_transform

ROOT = Path("/usr/share/datasets/fashion-mnist")


def test_reads_debian_fashion_mnist() -> None:
    config = RealDataConfig(root=ROOT, train_limit=100)
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]  # fmt: skip
    data = fashion_mnist(config, "train", names, image_transform(32, train=False))
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

"""The evaluation path on real weights: EfficientNet-Lite0 (ImageNet) through the catalog's
index order, and logits restricted to a set's classes (ImageNet-R / -A)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import cli
from PIL import Image
from torch.utils.data import DataLoader

from diversynth.data.classes.imagenet import imagenet_catalog
from diversynth.data.eval_sets import eval_transform, folder_set
from diversynth.models.classifier import load_checkpoint, topk_accuracy
from diversynth.stages.train.import_weights import import_efficientnet_lite0

CATS = {"n02123045", "n02123159", "n02123394", "n02123597", "n02124075"}  # domestic cats
TIMM_INFO = Path(__import__("timm").__file__).parent / "data" / "_info"


@pytest.fixture(scope="module")
def lite0_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "efficientnet-lite0.safetensors"
    import_efficientnet_lite0(path)
    return path


@pytest.fixture(scope="module")
def lite0(lite0_file: Path):
    model, meta = load_checkpoint(lite0_file)  # from the safetensors file, as evaluation does
    return model.eval(), meta


@pytest.fixture(scope="module")
def catalog() -> list[dict]:
    return [{"index": e.index, "wnid": e.wnid, "raw_name": e.raw_name}
            for e in imagenet_catalog(None)]  # fmt: skip


@pytest.fixture(scope="module")
def chelsea() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.chelsea())


def test_efficientnet_lite0_sees_a_cat_in_chelsea(lite0, catalog, chelsea, tmp_path) -> None:
    model, meta = lite0
    folder = tmp_path / "val" / "n02123045"  # tabby: the photo's label, by wnid
    folder.mkdir(parents=True)
    chelsea.save(folder / "chelsea.png")
    dataset, allowed = folder_set(tmp_path / "val", catalog, eval_transform(meta), None)
    assert allowed == [281]  # tabby's index in imagenet1k's order
    with torch.no_grad():
        logits = model(dataset[0][0][None])
    top5 = [catalog[i]["wnid"] for i in logits.topk(5).indices[0].tolist()]
    assert top5[0] in CATS and len(CATS & set(top5)) >= 2, top5
    result = topk_accuracy(model, DataLoader(dataset), torch.device("cpu"), "chelsea",
                           allowed=list(range(1000)))  # fmt: skip
    assert result["top5"] == 100.0


def test_imagenet_a_logits_are_restricted_to_its_classes(lite0, catalog, chelsea, tmp_path) -> None:
    model, meta = lite0
    wnids = (TIMM_INFO / "imagenet_a_synsets.txt").read_text().split()
    assert len(wnids) == 200 and "n02123159" not in wnids  # no tiger cat in ImageNet-A
    index = {c["wnid"]: c["index"] for c in catalog}
    transform = eval_transform(meta)
    with torch.no_grad():
        logits = model(transform(chelsea)[None])[0]
    unrestricted = catalog[int(logits.argmax())]["wnid"]
    among_a = max(wnids, key=lambda w: float(logits[index[w]]))
    assert unrestricted not in wnids  # a tiger cat: not one of ImageNet-A's classes
    assert among_a == "n02127052"  # lynx, the closest thing among A's 200
    root = tmp_path / "imagenet-a"
    for wnid in wnids:  # the set's 200 class folders; the photo filed under A's best guess
        (root / wnid).mkdir(parents=True)
    chelsea.save(root / among_a / "chelsea.png")
    loader_for = lambda dataset: DataLoader(dataset)  # noqa: E731
    dataset, allowed = folder_set(root, catalog, transform, None)
    assert allowed is not None and len(allowed) == 200
    restricted = topk_accuracy(model, loader_for(dataset), torch.device("cpu"), "A", allowed)
    assert restricted["top1"] == 100.0
    dataset, allowed = folder_set(root, catalog, transform, restrict=False)
    assert allowed is None
    assert topk_accuracy(model, loader_for(dataset), torch.device("cpu"), "A")["top1"] == 0.0


@pytest.mark.slow
def test_evaluate_model_command_takes_any_checkpoint_or_timm_model(
    lite0_file: Path, chelsea, tmp_path: Path
) -> None:
    val = tmp_path / "val"
    (val / "n02123045").mkdir(parents=True)
    chelsea.save(val / "n02123045" / "chelsea.png")
    config = tmp_path / "imagenet.yaml"  # no data section: only the folders below
    config.write_text(
        "classes: {catalog: imagenet1k}\n"
        f"evaluate: {{sets: [{{name: val, root: {val}, restrict: false}},\n"
        f"                   {{name: cats-only, root: {val}}}]}}\n"
    )
    result = cli("evaluate-model", str(config), "--checkpoint", str(lite0_file),
                 "--json", str(tmp_path / "lite0.json"), "--set", "train.device=cpu")  # fmt: skip
    assert result.returncode == 0, result.stderr
    sets = json.loads((tmp_path / "lite0.json").read_text())["sets"]
    assert sets["val"]["images"] == 1 and sets["val"]["top5"] == 100.0
    assert sets["cats-only"]["restricted_to_classes"] == 1 and sets["cats-only"]["top1"] == 100.0
    assert "cats-only" in result.stderr  # the table

    result = cli("evaluate-model", str(config), "--model", "no_such_net")
    assert result.returncode == 2
    assert "--model: not a timm model name (got 'no_such_net')" in result.stderr
    result = cli("evaluate-model", str(config), "--checkpoint", str(tmp_path / "missing.st"))
    assert result.returncode == 2 and "missing.st' does not exist" in result.stderr


def test_any_timm_model_comes_with_its_preprocessing() -> None:
    from diversynth.models.classifier import timm_model

    model, meta = timm_model("resnet18", pretrained=False, num_classes=7)
    assert model.num_classes == 7 and meta["image_size"] == 224
    assert (
        meta["mean"] == pytest.approx([0.485, 0.456, 0.406]) and meta["crop_pct"] == 0.95
    )  # resnet18.a1_in1k

"""Problems of the real data and the model settings found before the stages that cost
GPU-hours, and damaged images named in one line: a class the data lacks, a split folder
missing or empty, a misspelt train.model_kwargs key, a batch larger than an image
folder's real images, a truncated JPEG (named, listed by a scan, or left out with
data.skip_unreadable), an evaluate.sets folder that matches no class, a damaged JPEG
inside a synthetic shard."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import OFFLINE_CONFIG, set_args
from PIL import Image
from torch.utils.data import DataLoader

from diversynth.commands.preflight import preflight
from diversynth.config import ConfigError, load_config
from diversynth.pipeline import STAGE_NAMES
from diversynth.run.rundir import RunDir

CLASSES = [{"index": 0, "raw_name": "cat", "wnid": None},
           {"index": 1, "raw_name": "dog", "wnid": None}]  # fmt: skip


def _image(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(shade).integers(0, 255, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, "JPEG", quality=90)


def _folder(root: Path, train: int = 4, val: int = 2, names: tuple[str, ...] = ("cat", "dog"),
            splits: tuple[str, ...] = ("train", "val")) -> Path:  # fmt: skip
    """An image folder: `train` and `val` JPEGs of each class."""
    for split in splits:
        for k, name in enumerate(names):
            for i in range(train if split == "train" else val):
                _image(root / split / name / f"{i}.jpg", 40 * k + i)
    return root


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _overrides(kit_overrides: list[str], root: Path, *more: str) -> list[str]:
    kept = [o for o in kit_overrides if not o.startswith("data.")]
    # 8 images a step, 6 of them real: fewer than the 8 training images of _folder's
    return [*kept, "classes.names=[cat, dog]", "data.format=imagefolder", f"data.root={root}",
            "train.batch_size=8", *more]  # fmt: skip


def _config(kit_overrides: list[str], root: Path, *more: str):
    return load_config(OFFLINE_CONFIG, _overrides(kit_overrides, root, *more))


def _refused(kit_overrides: list[str], root: Path, *more: str,
             stages: list[str] = STAGE_NAMES) -> list[str]:  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        preflight(_config(kit_overrides, root, *more), stages)
    return str(caught.value).splitlines()


def test_only_the_splits_the_selected_stages_read_are_required(
    kit_overrides: list[str], tmp_path: Path
) -> None:
    """A folder of train/ only trains (no validation); a folder of val/ only evaluates; the
    classes stage in CLIP mode needs train/; Fashion-MNIST's missing files are named."""
    train_only = _folder(tmp_path / "train-only", splits=("train",))
    preflight(_config(kit_overrides, train_only, "train.batch_size=8"), ["train"])
    assert _refused(
        kit_overrides, train_only, "train.batch_size=8", "train.validate_every=1", stages=["train"]
    ) == [  # fmt: skip
        f"data.root: {str(train_only)!r} has no val/ folder (the test split, which the train "
        "stage (validation) reads)"
    ]
    val_only = _folder(tmp_path / "val-only", splits=("val",))
    preflight(_config(kit_overrides, val_only), ["evaluate"])
    assert _refused(
        kit_overrides, val_only, "classes.disambiguate.mode=clip", stages=["classes"]
    ) == [  # fmt: skip
        f"data.root: {str(val_only)!r} has no train/ folder (which the classes stage (CLIP "
        "exemplars) reads)"
    ]
    empty = tmp_path / "fashion"
    empty.mkdir()
    lines = _refused(kit_overrides, empty, "data.format=fashion-mnist", stages=["train"])
    assert lines[0] == (f"data.root: {str(empty)!r} has no train-images-idx3-ubyte (or "
                        "train-images-idx3-ubyte.gz) file (Fashion-MNIST's train split, which "
                        "the train stage reads)")  # fmt: skip
    assert len(lines) == 3  # the label file, and cat and dog are no Fashion-MNIST classes
    assert lines[2].startswith("data: classes not in the real dataset: ['cat', 'dog']")


def test_model_kwargs_are_checked_before_any_stage(
    kit_overrides: list[str], tmp_path: Path
) -> None:
    """A misspelt train.model_kwargs key is named (with the close setting), and
    `pretrained` is refused with where pretrained weights come from instead."""
    root = _folder(tmp_path / "data")
    assert _refused(
        kit_overrides,
        root,
        "train.model_kwargs={drop_rat: 0.1, drop_path_rat: 0}",
        "train.batch_size=8",
    ) == [  # fmt: skip
        "train.model_kwargs: 'drop_rat' is not a setting of resnet10t; did you mean 'drop_rate'?",
        "train.model_kwargs: 'drop_path_rat' is not a setting of resnet10t; did you mean "
        "'drop_path_rate'?",
    ]
    (line,) = _refused(kit_overrides, root, "train.model_kwargs={pretrained: true}")
    assert line.startswith("train.model_kwargs: 'pretrained' is not taken: training starts "
                           "from random weights")  # fmt: skip
    assert "`diversynth import-weights`" in line and "--checkpoint" in line
    (line,) = _refused(kit_overrides, root, "train.model_kwargs={global_pool: nonsense}")
    assert line.startswith("train.model_kwargs: resnet10t refuses {'global_pool': 'nonsense'}")
    # good settings pass (and the model is built once, on the meta device)
    preflight(_config(kit_overrides, root, "train.model_kwargs={drop_path_rate: 0.1}",
                      "train.batch_size=8"), STAGE_NAMES)  # fmt: skip


def test_data_problems_stop_a_run_before_any_stage(
    kit_overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`diversynth run` with every stage: a class the image folder lacks, a data root
    without val/, an empty val/CLASS folder stop it before the classes stage, one error
    line each (exit 2), and nothing is made (no classes.jsonl, no shards)."""
    from typer.testing import CliRunner

    from diversynth.commands.cli import app

    monkeypatch.setenv("COLUMNS", "300")
    lacking = _folder(tmp_path / "lacking", names=("cat",))
    no_val = _folder(tmp_path / "no-val", splits=("train",))
    empty = _folder(tmp_path / "empty")
    for path in (empty / "val" / "dog").iterdir():
        path.unlink()
    cases = [
        (lacking, ["error: data.root: train/ has no folder for 1 of the 2 classes: 'dog' (a "
                   "class's folder is named by its wnid, its name or its index)",
                   "error: data.root: val/ has no folder for 1 of the 2 classes: 'dog' (a "
                   "class's folder is named by its wnid, its name or its index)"]),
        (no_val, [f"error: data.root: {str(no_val)!r} has no val/ folder (the test split, "
                  "which the leaks stage and the evaluate stage read)"]),
        (empty, ["error: data.root: 1 class folder(s) without an image: 'val/dog' (images "
                 "end in .jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp)"]),
    ]  # fmt: skip
    for k, (root, expected) in enumerate(cases):
        out = tmp_path / f"run{k}"
        args = ["run", str(OFFLINE_CONFIG), "--out", str(out),
                *set_args(_overrides(kit_overrides, root))]  # fmt: skip
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == \
            expected  # fmt: skip
        assert not (out / "classes.jsonl").exists() and not (out / "shards").exists()


def test_a_batch_larger_than_an_image_folder_is_refused_up_front(
    kit_overrides: list[str], tmp_path: Path
) -> None:
    """The real part of a batch against the folder's training images (the listing, or the
    subset chosen), before any stage runs, as Fashion-MNIST's is."""
    root = _folder(tmp_path / "data", train=6)  # 12 training images
    # 16 a step, a quarter synthetic: 12 real, as many as there are
    preflight(_config(kit_overrides, root, "train.batch_size=16"), STAGE_NAMES)
    assert _refused(kit_overrides, root, "train.batch_size=20") == [
        "train.batch_size: 20 images a step hold 15 real ones, more than the 12 real training "
        "images: lower train.batch_size (got 20)"
    ]
    assert _refused(kit_overrides, root, "train.batch_size=16", "data.train_limit=10") == [
        "train.batch_size: 16 images a step hold 12 real ones, more than the 10 real training "
        "images: lower train.batch_size (got 16)"
    ]
    assert _refused(kit_overrides, root, "train.batch_size=16", "data.subset.per_class=5") == [
        "train.batch_size: 16 images a step hold 12 real ones, more than the 10 real training "
        "images: lower train.batch_size (got 16)"
    ]


def _train_run(tmp_path: Path) -> RunDir:
    """A run directory holding classes.jsonl, as the classes stage writes it."""
    run = RunDir(tmp_path / "run")
    run.root.mkdir(parents=True)
    run.classes.write_text("".join(json.dumps({**c, "name": c["raw_name"]}) + "\n"
                                   for c in CLASSES))  # fmt: skip
    return run


@pytest.mark.slow
def test_train_says_how_many_real_images_an_epoch_uses_and_skips_unreadable_ones(
    kit_overrides: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """48 real images in batches of 32 real: the stage says an epoch uses 32 of them. With
    data.skip_unreadable the truncated JPEG is left out, counted in the console and the
    summary, and the list saved in the run is what a rerun uses (no second scan)."""
    from diversynth.data import scan as data_scan
    from diversynth.stages.train.loop import run_train

    root = _folder(tmp_path / "data", train=24)
    run = _train_run(tmp_path)
    settings = ("train.batch_size=32", "train.synthetic_fraction=0", "train.tensorboard=false",
                "train.device=cpu")  # fmt: skip
    summary = run_train(_config(kit_overrides, root, *settings), run)
    err = " ".join(capsys.readouterr().err.split())
    assert "train: an epoch uses 32 of the 48 real training images (1 step(s) of 32 real " \
           "images); the 16 left over are not seen (1 epoch)" in err  # fmt: skip
    assert summary["real_images_per_epoch"] == 32 and summary["real_training_set"] == 48

    _truncate(root / "train" / "dog" / "3.jpg")
    config = _config(kit_overrides, root, *settings, "data.skip_unreadable=true")
    summary = run_train(config, run)
    err = " ".join(capsys.readouterr().err.split())
    assert (
        "data.skip_unreadable: 1 of the 48 images of the real train split cannot be read "
        "and are left out (first: 'train/dog/3.jpg': truncated: the file ends before the image "
        "does); all of them in real/unreadable-train.json" in err
    )
    assert summary["real_training_set"] == 47
    assert summary["unreadable_left_out"] == {"train": 1, "test": 0}
    saved = json.loads((run.root / "real" / "unreadable-train.json").read_text())
    assert [item[0] for item in saved["unreadable"]] == ["train/dog/3.jpg"]

    def no_scan(*args: object, **kwargs: object) -> None:
        raise AssertionError("scanned again")

    original = data_scan.scan
    data_scan.scan = no_scan  # type: ignore[assignment]
    try:
        assert run_train(config, run)["real_training_set"] == 47
    finally:
        data_scan.scan = original


def _config_data(root: Path):
    from diversynth.config import RealDataConfig

    return RealDataConfig(format="imagefolder", root=root)


def _read_all(loader: DataLoader) -> None:
    """Every batch of the loader; its worker processes ended at once after an error (torch
    otherwise waits 5 s for a worker that raised to exit, when the iterator is collected)."""
    batches = iter(loader)
    try:
        for _ in batches:
            pass
    finally:
        for worker in getattr(batches, "_workers", []):
            worker.terminate()


def test_a_truncated_jpeg_is_named_in_one_line_even_from_a_loader_worker(tmp_path: Path) -> None:
    """The file (relative to data.root) and its class, what to do, on one line: a
    DataLoader worker's error reaches the stage without the worker's traceback."""
    from diversynth.data.real import UnreadableImageError, real_dataset

    root = _folder(tmp_path / "data")
    _truncate(root / "train" / "dog" / "1.jpg")
    dataset = real_dataset(_config_data(root), "train", CLASSES, lambda image: np.array(image))
    for workers in (0, 1):
        with pytest.raises(UnreadableImageError) as caught:
            _read_all(DataLoader(dataset, batch_size=2, num_workers=workers))
        assert str(caught.value) == (
            "data.root: 'train/dog/1.jpg' (class 1 'dog') cannot be read: truncated: the file "
            "ends before the image does; `diversynth verify --data CONFIG` lists every such "
            "image; data.skip_unreadable: true leaves them out"
        ), workers


def test_verify_data_lists_every_unreadable_image(
    kit_overrides: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`diversynth verify --data`: every image of the train and test splits and of the
    evaluate.sets folders that does not decode, one line each, nothing written."""
    from diversynth.data.scan import verify_data

    root = _folder(tmp_path / "data")
    sketch = _folder(tmp_path / "sketch", splits=("val",)) / "val"
    _truncate(root / "train" / "cat" / "2.jpg")
    (root / "val" / "dog" / "0.jpg").write_bytes(b"not a jpeg")
    (root / "val" / "dog" / "9.jpg").write_bytes(b"")
    _truncate(sketch / "cat" / "1.jpg")
    os.mkfifo(root / "train" / "dog" / "fifo.jpg")  # would block a loader for ever
    config = _config(kit_overrides, root, f"evaluate.sets=[{{name: sketch, root: {sketch}}}]")
    before = sorted(p for p in tmp_path.rglob("*"))
    assert verify_data(config, workers=2) == 5
    err = capsys.readouterr().err
    lines = [" ".join(line.split()) for line in err.splitlines() if line.startswith("unreadable:")]
    assert lines == [
        "unreadable: data.root: 'train/cat/2.jpg' (class 0 'cat'): truncated: the file "
        "ends before the image does",
        "unreadable: data.root: 'train/dog/fifo.jpg' (class 1 'dog'): is not a regular file",
        "unreadable: data.root: 'val/dog/0.jpg' (class 1 'dog'): not an image file PIL can "
        "identify",
        "unreadable: data.root: 'val/dog/9.jpg' (class 1 'dog'): not an image file PIL can "
        "identify",
        "unreadable: evaluate.sets[0].root: 'cat/1.jpg' (class 0 'cat'): truncated: the file "
        "ends before the image does",
    ]
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written
    from conftest import invoke  # the command: one line each, exit 1

    overrides = _overrides(kit_overrides, root, f"evaluate.sets=[{{name: sketch, root: {sketch}}}]")
    code, errors, output = invoke("verify", "--data", str(OFFLINE_CONFIG),
                                  *[a for o in overrides for a in ("--set", o)])  # fmt: skip
    named = [line for line in output.splitlines() if line.startswith("unreadable:")]
    assert code == 1 and len(named) == 5 and "5 image(s) cannot be read" in output


def test_two_classes_that_one_folder_matches_are_refused(
    kit_overrides: list[str], tmp_path: Path
) -> None:
    """Names match folders in any case: `Cat` and `cat` both took the folder `cat`, all its
    images went to the last, and top-1 read 100%. Refused, naming both, before any stage."""
    root = _folder(tmp_path / "data")
    lines = _refused(kit_overrides, root, "classes.names=[Cat, dog, cat]")
    assert lines == [
        "data.root: classes 0 ('Cat') and 2 ('cat') both match the folder 'cat' (names match "
        "in any case): rename one class, or give each its wnid"
    ]
    from diversynth.data.real import DataError, catalog_to_dataset_labels

    with pytest.raises(DataError, match=r"classes 0 \('Shirt'\) and 1 \('shirt'\) are both"):
        catalog_to_dataset_labels(["Shirt", "shirt"], ["T-shirt/top", "Shirt"])


def test_skip_unreadable_leaves_them_out_of_every_split_the_same_way_each_time(
    kit_overrides: list[str], tmp_path: Path
) -> None:
    """The images left out are found once, saved in the run keyed by the files' identity,
    and read back by the next stage or rerun; a file changed since is scanned again."""
    from diversynth.data import scan as data_scan
    from diversynth.data.eval_sets import evaluation_sets

    root = _folder(tmp_path / "data")
    sketch = _folder(tmp_path / "sketch", splits=("val",)) / "val"
    _truncate(root / "val" / "cat" / "1.jpg")
    (sketch / "dog" / "0.jpg").write_bytes(b"\xff\xd8 broken")
    config = _config(kit_overrides, root, "data.skip_unreadable=true",
                     f"evaluate.sets=[{{name: sketch, root: {sketch}}}]")  # fmt: skip
    run = RunDir(tmp_path / "run")
    calls: list[int] = []
    original = data_scan.scan

    def counted(root: Path, ids: list[str], *args: object, **kwargs: object):
        calls.append(len(ids))
        return original(root, ids, *args, **kwargs)  # type: ignore[arg-type]

    data_scan.scan = counted  # type: ignore[assignment]
    try:
        sets = evaluation_sets(config, run, CLASSES, lambda image: 0)
        assert [(s.name, len(s.dataset), s.unreadable) for s in sets] == [
            ("imagefolder/test", 3, 1),
            ("sketch", 3, 1),
        ]
        assert "val/cat/1.jpg" not in sets[0].ids and "dog/0.jpg" not in sets[1].ids
        assert sets[1].dataset.targets == [0, 0, 1]  # type: ignore[attr-defined]
        assert calls == [4, 4]
        again = evaluation_sets(config, run, CLASSES, lambda image: 0)  # the leaks stage
        assert [s.ids for s in again] == [s.ids for s in sets] and calls == [4, 4]
        _image(root / "val" / "cat" / "1.jpg", 7)  # repaired: scanned again, kept
        third = evaluation_sets(config, run, CLASSES, lambda image: 0)
        assert calls == [4, 4, 4] and (len(third[0].dataset), third[0].unreadable) == (4, 0)
    finally:
        data_scan.scan = original


def test_an_evaluate_set_that_matches_no_class_is_named(
    kit_overrides: list[str], tmp_path: Path
) -> None:
    """evaluate.sets[i].root and the set's name, not data.root: before any stage runs,
    and from the stage itself."""
    from diversynth.data.eval_sets import folder_set
    from diversynth.data.real import DataError

    root = _folder(tmp_path / "data")
    other = _folder(tmp_path / "other", names=("bird", "fish"), splits=("val",)) / "val"
    sets = f"evaluate.sets=[{{name: fine, root: {root / 'val'}}}, {{name: sketch, root: {other}}}]"
    assert _refused(kit_overrides, root, sets, stages=["evaluate"]) == [
        f"evaluate.sets[1].root ('sketch'): no folder in {str(other)!r} is named by a class's "
        "wnid, name or index (its folders: 'bird', 'fish')"
    ]
    field = "evaluate.sets[1].root ('sketch')"
    with pytest.raises(DataError, match=r"^evaluate\.sets\[1\]\.root \('sketch'\): no folder in"):
        folder_set(other, CLASSES, lambda image: image, None, field)


def _shard(folder: Path, name: str, count: int) -> pa.Table:
    """A USTAR shard of `count` JPEGs as the generate stage writes them, and its rows."""
    from diversynth.run.artifacts.shards import jpeg_locations

    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / f"{name}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(count):
            path = folder / "image.jpg"
            _image(path, i)
            tar.add(path, arcname=f"{name}_{i:04d}.jpg")
            path.unlink()
    where = jpeg_locations(folder / f"{name}.tar")
    keys = sorted(where)
    return pa.table({"key": keys, "shard": [name] * count,
                     "class_index": [i % 2 for i in range(count)],
                     "jpg_offset": [where[k][0] for k in keys],
                     "jpg_size": [where[k][1] for k in keys]})  # fmt: skip


def test_a_damaged_jpeg_in_a_shard_names_the_shard_and_sample(tmp_path: Path) -> None:
    """One JPEG overwritten in place: one line (also from a loader worker) naming the
    shard and the sample key, and `diversynth verify --run` for the rest."""
    from diversynth.stages.train.synthetic import DamagedShardError, ShardImages

    shards = tmp_path / "run" / "shards"
    rows = _shard(shards, "000003", 4)
    offset = rows.column("jpg_offset")[2].as_py()
    with (shards / "000003.tar").open("r+b") as handle:
        handle.seek(offset)
        handle.write(b"\0" * 64)  # the JPEG's header gone
    images = ShardImages(shards, rows, lambda image: np.array(image))
    assert images[1][1] == 1  # the others still read
    for workers in (0, 1):
        with pytest.raises(DamagedShardError) as caught:
            _read_all(DataLoader(images, batch_size=4, num_workers=workers))
        assert str(caught.value) == (
            "train: shards/000003.tar, sample '000003_0002': cannot be read (not an image file "
            "PIL can identify); the shard changed after the generate stage wrote it: "
            f"`diversynth verify --run {tmp_path / 'run'}` names every damaged file, and "
            "`diversynth run` makes them again"
        ), workers


@pytest.mark.timeout(60)
def test_a_subset_list_that_is_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    from diversynth.data.subset import read_list
    from diversynth.errors import UsageError

    fifo = tmp_path / "list.txt"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match=r"data.subset.list: .*list.txt' is a FIFO"):
        read_list(fifo, tmp_path, CLASSES, "data.subset.list")


def test_the_layout_check_lists_images_as_torchvision_does() -> None:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from diversynth.data.images import IMAGE_EXTENSIONS

    assert IMAGE_EXTENSIONS == IMG_EXTENSIONS


def test_an_image_of_too_many_pixels_is_refused_from_its_header(tmp_path: Path) -> None:
    """A 160 KB PNG of 13000 x 13000 pixels took 3.2 GB to decode: its size is read from
    the header and refused before any pixel is."""
    import struct
    import zlib

    from diversynth.data.images import MAX_PIXELS, ImageReadError, open_rgb

    side = 9000  # 81 megapixels, above the bound
    assert side * side > MAX_PIXELS
    rows = zlib.compress(b"\0" * ((side + 1) * side), 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    path = tmp_path / "big.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side,
                     8, 0, 0, 0, 0)) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))  # fmt: skip
    with pytest.raises(ImageReadError, match="is 9000 x 9000 pixels, above the bound of 64"):
        open_rgb(path)

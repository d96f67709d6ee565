"""Long-tailed and low-data real sets: reproducible subsets saved in the run, synthetic
budgets per class, class-aware sampling with exact resume, top-1 by class frequency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import OFFLINE_CONFIG

from diversynth.config import ConfigError, FrequencyGroups, PromptsConfig, load_config
from diversynth.data.real import FASHION_MNIST_CLASSES, DataError
from diversynth.data.subset import chosen_listing, class_counts, real_subset, saved_path
from diversynth.run.rundir import RunDir
from diversynth.stages.evaluate.stage import frequency_groups
from diversynth.stages.prompts.budget import class_budgets, spread_images
from diversynth.stages.train.sampling import MixedBatches, class_aware_orders

CLASSES = [{"index": i, "raw_name": n, "wnid": None} for i, n in enumerate(FASHION_MNIST_CLASSES)]


def _config(*overrides: str):
    return load_config(OFFLINE_CONFIG, ["data.train_limit=null", *overrides])


def _counts(listing) -> list[int]:
    return class_counts(listing.labels, len(CLASSES)).tolist()


def test_subsets_take_the_counts_asked_and_nest() -> None:
    """per_class: N of each class; fraction: that share of each class; imbalance: the
    exponential long tail (CIFAR-LT's profile); the 5-shot choice lies inside the 10-shot
    one (files ranked by a hash of seed and id), another seed chooses other files."""
    five = chosen_listing(_config("data.subset.per_class=5"), "train", CLASSES)
    ten = chosen_listing(_config("data.subset.per_class=10"), "train", CLASSES)
    assert _counts(five) == [5] * 10 and _counts(ten) == [10] * 10
    assert set(five.ids) < set(ten.ids)
    other = chosen_listing(
        _config("data.subset.per_class=5", "data.subset.seed=1"), "train", CLASSES
    )
    assert _counts(other) == [5] * 10 and set(other.ids) != set(five.ids)
    # the images really are of the labelled class (Fashion-MNIST's own labels, by row)
    from diversynth.data.real import read_idx

    labels = read_idx(Path("/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte"))
    rows = [int(i.split("/")[1]) for i in five.ids]
    assert labels[rows].tolist() == five.labels.tolist()

    tail = chosen_listing(_config("data.subset={per_class: 300, imbalance: 100}"), "train", CLASSES)
    assert _counts(tail) == [300, 179, 107, 64, 38, 23, 13, 8, 5, 3]
    part = chosen_listing(_config("data.subset.fraction=0.01"), "train", CLASSES)
    assert _counts(part) == [60] * 10


def test_per_class_beyond_a_class_uses_all_it_has_or_fails_with_strict(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = _config("data.train_limit=300", "data.subset.per_class=40")
    listing = chosen_listing(config, "train", CLASSES)
    everything = chosen_listing(_config("data.train_limit=300", "data.subset.fraction=1"),
                                "train", CLASSES)  # fmt: skip
    have = class_counts(everything.labels, 10)
    assert _counts(listing) == np.minimum(have, 40).tolist()
    short = [FASHION_MNIST_CLASSES[i] for i in range(10) if have[i] < 40]
    out = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "data.subset.per_class: 40 images asked of classes that have fewer" in out
    assert repr(short[0]) in out and "using all they have" in out
    with pytest.raises(DataError, match=r"per_class: 40 .* \(strict: true\)"):
        chosen_listing(_config("data.train_limit=300", "data.subset={per_class: 40, strict: true}"),
                       "train", CLASSES)  # fmt: skip


def test_a_bad_subset_list_names_its_lines(tmp_path: Path) -> None:
    """Missing files and unknown classes: the first three of each, with line numbers, in
    one error; paths may not leave data.root."""
    root = tmp_path / "data"
    for name in ("a", "b"):
        (root / "train" / name).mkdir(parents=True)
        (root / "train" / name / "1.png").write_bytes(b"")
    (root / "val").mkdir()
    listing = tmp_path / "lt.txt"
    listing.write_text(
        "# comment\ntrain/a/1.png 0\ntrain/b/1.png n01440764\ntrain/a/2.png 0\n"
        "train/a/3.png 0\ntrain/a/4.png 0\ntrain/a/5.png 0\ntrain/b/1.png 7\nno-label\n"
        "../etc/passwd 0\ntrain/a/1.png 1\ntrain/n09999999/1.png 0\ntrain/a/1.png 0\n"
    )
    classes = [{"index": 0, "raw_name": "a", "wnid": None},
               {"index": 1, "raw_name": "b", "wnid": "n01440764"}]  # fmt: skip
    config = load_config(OFFLINE_CONFIG, ["data.format=imagefolder", f"data.root={root}",
                                          f"data.subset.list={listing}"])  # fmt: skip
    with pytest.raises(DataError) as caught:
        chosen_listing(config, "train", classes)
    where = f"data.subset.list: {str(listing)!r}:"
    assert str(caught.value).splitlines() == [
        f"{where} not `path label` on 1 line: line 9 'no-label'",
        f"{where} a path outside data.root on 1 line: line 10 '../etc/passwd'",
        f"{where} a file that does not exist under {str(root)!r} on 5 lines: line 4 "
        "'train/a/2.png', line 5 'train/a/3.png', line 6 'train/a/4.png', ...",
        f"{where} a class that is not in the class list (labels are class indices 0-1 or "
        "wnids, and agree with a folder named by wnid or name) on 3 lines: line 8 '7', "
        "line 11 \"1, but the folder 'a' is class 0\", line 12 '0 (n09999999)'",
        f"{where} a file listed before on 1 line: line 13 'train/a/1.png'",
    ]
    listing.write_text("train/a/1.png 0\ntrain/b/1.png n01440764\n")
    chosen = chosen_listing(config, "train", classes)
    assert chosen.ids == ["train/a/1.png", "train/b/1.png"] and chosen.labels.tolist() == [0, 1]


def test_the_saved_subset_is_reused_while_its_settings_hold(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    config = _config("data.subset.per_class=3")
    first = real_subset(config, run, "train", CLASSES)
    saved = saved_path(run, "train")
    assert saved.read_text().splitlines()[0] == f"{first.ids[0]} {first.labels[0]}"
    # a choice written to the run is read back as it is, not made again
    kept = saved.read_text().splitlines()[:5]
    saved.write_text("\n".join(kept) + "\n")
    assert real_subset(config, run, "train", CLASSES).ids == [line.split()[0] for line in kept]
    # settings the training images do not depend on leave the choice alone
    other = _config("data.subset.per_class=3", "data.test_limit=100", "report.images_per_class=3")
    assert real_subset(other, run, "train", CLASSES).ids == [line.split()[0] for line in kept]
    # other settings: chosen again
    again = real_subset(_config("data.subset.per_class=4"), run, "train", CLASSES)
    assert _counts(again) == [4] * 10 and len(saved.read_text().splitlines()) == 40


def test_budgets() -> None:
    real = np.array([300, 179, 107, 64, 38, 23, 13, 8, 5, 3])
    uniform = PromptsConfig(per_class=10, images_per_prompt=2)
    assert class_budgets(uniform, None, 10) == [20] * 10
    inverse = PromptsConfig(per_class=10, images_per_prompt=2,
                            budget={"kind": "inverse", "floor": 4})  # fmt: skip
    budgets = class_budgets(inverse, real, 10)
    assert sum(budgets) == 200 and min(budgets) == budgets[0] == 4  # the head needs none
    assert budgets == sorted(budgets)  # fewer real images, more synthetic ones
    fill = PromptsConfig(budget={"fill_to": 50, "floor": 2})
    assert class_budgets(fill, real, 10) == [2, 2, 2, 2, 12, 27, 37, 42, 45, 47]
    with pytest.raises(ConfigError, match=r"fill_to: every class already has 20 real images"):
        class_budgets(PromptsConfig(budget={"fill_to": 20}), np.full(10, 25), 10)
    with pytest.raises(ConfigError, match=r"total: 10 is less than floor x classes \(4 x 10\)"):
        class_budgets(PromptsConfig(budget={"kind": "inverse", "floor": 4, "total": 10}), real, 10)
    # a class's images over its prompts: over the strategies first, so the shares hold
    # with fewer images than prompts, then by each prompt's slots
    naive = [("naive", 1), ("naive", 2)]
    assert spread_images(7, [*naive, ("cd", 1)]) == [2, 3, 2]
    prompts = [("naive", 1)] * 2 + [("cd", 1)] * 5 + [("sd", 1)] * 3
    four = spread_images(4, prompts)
    assert [sum(four[:2]), sum(four[2:7]), sum(four[7:])] == [1, 2, 1]
    assert spread_images(20, prompts) == [2] * 10


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["prompts.budget.kind=fill_to"], "prompts.budget.kind is fill_to: give"),
        (["prompts.budget={kind: uniform, floor: 3}"], "prompts.budget.floor has no effect"),
        (["prompts.budget=inverse", "data=null", "train.synthetic_fraction=0"],
         "prompts.budget.kind is inverse: it counts each class's real images"),
        (["evaluate.groups={many_above: 10, few_below: 50}"], "few_below (50) must not exceed"),
        (["data.subset={per_class: 5, fraction: 0.5}"], "give one of data.subset.per_class"),
    ],
)  # fmt: skip
def test_bad_long_tail_settings_are_one_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(OFFLINE_CONFIG, overrides)
    assert message in str(caught.value) and len(str(caught.value).splitlines()) == 1


def test_class_aware_orders_balance_and_resume_exactly() -> None:
    """balanced: every class equally often in an epoch (tail images repeated evenly);
    sqrt: in proportion to the square root of the counts; the batches stay a function of
    the step, so a resumed sampler gives the uninterrupted one's batches."""
    counts = np.array([300, 179, 107, 64, 38, 23, 13, 8, 5, 3])
    labels = np.repeat(np.arange(10), counts)
    real, _ = class_aware_orders("balanced", "real", labels, None)
    first, second = real.order(7, 0), real.order(7, 1)
    assert np.bincount(labels[first.numpy()]).tolist() == [74] * 10  # 740 images / 10
    assert len(first) == len(labels) and not torch.equal(first, second)
    tail = labels[np.concatenate([first.numpy(), second.numpy()])] == 9
    seen = np.bincount(np.concatenate([first.numpy(), second.numpy()])[tail])
    assert np.ptp(seen[seen > 0]) <= 1  # 3 images, 148 draws: each 49 or 50 times
    sqrt = class_aware_orders("sqrt", "real", labels, None)[0].order(7, 0)
    drawn = np.bincount(labels[sqrt.numpy()])
    assert np.abs(drawn - len(labels) * np.sqrt(counts) / np.sqrt(counts).sum()).max() <= 1
    # instance: plain permutations, the batches of a run without train.sampler
    plain = list(MixedBatches(len(labels), 0, 24, 0, seed=3, epochs=1))
    instance = class_aware_orders("instance", "both", labels, None)
    assert list(MixedBatches(len(labels), 0, 24, 0, 3, 1, real_order=instance[0])) == plain
    assert class_aware_orders("balanced", "both", labels[:0], None) == (None, None)  # no images

    synthetic = np.repeat(np.arange(10), 20)
    orders = class_aware_orders("balanced", "both", labels, synthetic)
    full = MixedBatches(len(labels), len(synthetic), 24, 8, seed=3, epochs=2,
                        real_order=orders[0], synthetic_order=orders[1])  # fmt: skip
    batches = list(full)
    resumed = MixedBatches(len(labels), len(synthetic), 24, 8, seed=3, epochs=2, start=17,
                           real_order=orders[0], synthetic_order=orders[1])  # fmt: skip
    assert list(resumed) == batches[17:]
    real_seen = np.bincount(labels[[i for b in batches[: full.per_epoch] for i, _ in b[:24]]])
    assert np.ptp(real_seen) <= 24  # nearly equal per class within an epoch


def test_frequency_groups() -> None:
    top1 = [90.0, 80.0, 70.0, 60.0, None, 40.0]
    train = [500, 101, 100, 20, 5, 19]
    groups = frequency_groups(top1, train, FrequencyGroups())
    assert groups == {
        "many": {"classes": 2, "top1": 85.0},
        "medium": {"classes": 2, "top1": 65.0},
        "few": {"classes": 1, "top1": 40.0},  # the class the set lacks is left out
    }
    wide = frequency_groups(top1, train, FrequencyGroups(many_above=50, few_below=50))
    assert wide["medium"] == {"classes": 0, "top1": None}


# --------------------------------------------------------------------------- whole runs


def _image_folder(root: Path, per_class: int, start: int = 0, prefix: str = "") -> None:
    """Fashion-MNIST images as an ImageFolder, class folders named by class index."""
    from PIL import Image

    from diversynth.data.real import read_idx

    fashion = Path("/usr/share/datasets/fashion-mnist")
    images = read_idx(fashion / "train-images-idx3-ubyte")
    labels = read_idx(fashion / "train-labels-idx1-ubyte")
    for split, count, offset in (("train", per_class, start), ("val", 3, 5000)):
        for label in range(10):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            rows = np.nonzero(labels == label)[0][offset : offset + count]
            for row in rows:
                Image.fromarray(images[row]).save(folder / f"{prefix}{row}.png")


@pytest.mark.slow
def test_few_shot_run_resumed_after_a_kill_uses_the_saved_files(
    run_copy: Path, kit_overrides: list[str], tmp_path: Path
) -> None:
    """5 images a class from an ImageFolder: a run killed mid-training resumes on the
    files it chose and ends with the uninterrupted run's weights; files added to the
    folder later (a fresh choice would take some) leave the saved choice, and so the
    model, as they were."""
    import json
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO, set_args
    from safetensors.torch import load_file

    from diversynth.pipeline import run_stages

    data = tmp_path / "fashion"
    _image_folder(data, per_class=12)
    few = [*kit_overrides, "data.format=imagefolder", f"data.root={data}",
           "data.train_limit=null", "data.test_limit=null", "data.subset.per_class=5",
           "train.batch_size=16", "train.synthetic_fraction=0.5", "train.epochs=8",
           "train.checkpoint_every=2", "train.lr=0.02"]  # fmt: skip
    config = load_config(OFFLINE_CONFIG, few)

    def train(run: Path, force: bool = False) -> dict:
        run_stages(config, RunDir(run), stages=["train"], force=["train"] if force else None)
        return json.loads((run / ".state" / "train.json").read_text())["summary"]

    def weights(run: Path) -> dict[str, torch.Tensor]:
        return load_file(str(run / "train" / "model.safetensors"))

    reference = tmp_path / "reference"
    shutil.copytree(run_copy, reference)
    expected = train(reference)
    assert expected["real_training_set"] == 50 and expected["steps"] == 8 * (50 // 8)
    saved = (reference / "real" / "train.txt").read_text()
    assert len(saved.splitlines()) == 50

    shutil.rmtree(run_copy / "train")
    metrics = run_copy / "train" / "metrics.jsonl"
    args = [sys.executable, "-m", "diversynth", "train", str(OFFLINE_CONFIG), "--out",
            str(run_copy), *set_args(few)]  # fmt: skip
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and metrics.read_text().count('"loss"') >= 9:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run_copy / "real" / "train.txt").read_text() == saved

    resumed = train(run_copy)
    assert resumed["resumed_from_step"] >= 8
    got, want = weights(run_copy), weights(reference)
    assert all(torch.equal(got[k], want[k]) for k in want), "resumed weights differ"

    # more files in the folder: a fresh choice differs, the run keeps its own
    _image_folder(data, per_class=10, start=100, prefix="new-")
    grown = chosen_listing(config, "train", [dict(c) for c in CLASSES])
    assert set(grown.ids) != {line.split()[0] for line in saved.splitlines()}
    train(run_copy, force=True)
    assert (run_copy / "real" / "train.txt").read_text() == saved
    got = weights(run_copy)
    assert all(torch.equal(got[k], want[k]) for k in want), "the grown folder changed training"


@pytest.mark.slow
def test_long_tail_config_runs_end_to_end(
    finished_run: Path, kit_overrides: list[str], tmp_path: Path
) -> None:
    """configs/long-tail.yaml on a copy of the offline demo's run (its LLM answers are
    cached there): the real long tail saved in the run, each class's synthetic images
    exactly its budget, top-1 per frequency group in eval.json and the report, and the
    comparison of runs showing the groups."""
    import json
    import shutil

    import pyarrow.parquet as pq
    from conftest import REPO, cli, set_args

    run = tmp_path / "long-tail"
    shutil.copytree(finished_run, run)
    overrides = [o for o in kit_overrides if not o.startswith("data.")]
    result = cli("run", str(REPO / "configs" / "long-tail.yaml"), "--out", str(run),
                 *set_args(overrides))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    real = [0] * 10
    for line in (run / "real" / "train.txt").read_text().splitlines():
        real[int(line.split()[1])] += 1
    assert real == [300, 179, 107, 64, 38, 23, 13, 8, 5, 3]
    prompts = json.loads((run / ".state" / "prompts.json").read_text())["summary"]
    budget = prompts["budget"]
    assert budget["kind"] == "inverse" and budget["real_per_class"] == real
    config = load_config(REPO / "configs" / "long-tail.yaml", overrides)
    assert budget["images_per_class"] == class_budgets(config.prompts, np.array(real), 10)
    made = np.bincount(pq.read_table(run / "manifest.parquet")["class_index"].to_numpy(),
                       minlength=10)  # fmt: skip
    assert made.tolist() == budget["images_per_class"]  # exactly the budget, class by class
    assert made.sum() == 200  # the config's total

    train = json.loads((run / ".state" / "train.json").read_text())["summary"]
    assert train["real_training_set"] == sum(real) and train["sampler"] == "balanced (both)"
    test = json.loads((run / "eval.json").read_text())["sets"]["fashion-mnist/test"]
    groups = test["groups"]
    assert [groups[k]["classes"] for k in ("many", "medium", "few")] == [3, 3, 4]
    assert test["train_images_per_class"] == real
    per_class = test["class_top1"]
    assert test["mean_class_top1"] == pytest.approx(sum(per_class) / 10, abs=1e-3)
    assert groups["few"]["top1"] == pytest.approx(sum(per_class[6:]) / 4, abs=1e-3)

    page = (run / "report" / "index.html").read_text()
    table = page[page.index('id="frequency-groups"') :].split("</table>")[0]
    assert f"{groups['few']['top1']:.2f} (4)" in table
    assert f"{test['mean_class_top1']:.2f}" in table
    classes = page[page.index('id="classes"') :].split("</table>")[0]
    assert "synthetic budget" in classes

    out = tmp_path / "compare"
    result = cli("report", "--run", str(finished_run), "--run", str(run), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    compared = (out / "index.html").read_text()
    rows = compared[compared.index('id="frequency-groups"') :].split("</table>")[0]
    assert "long-tail" in rows and "offline-demo" in rows
    assert (out / "plots" / "frequency_groups.png").is_file()


def test_exemplars_come_from_the_subset_only() -> None:
    """A few-shot run's class names are chosen with its own real images, no others."""
    from diversynth.data.classes.entry import ClassEntry
    from diversynth.data.real import read_idx
    from diversynth.stages.classes.exemplars import exemplar_images

    config = _config("data.subset.per_class=2")
    chosen = chosen_listing(config, "train", CLASSES)
    entries = [ClassEntry(c["index"], c["raw_name"]) for c in CLASSES]
    groups = exemplar_images(config.data, entries, 5, chosen)
    assert [len(g) for g in groups] == [2] * 10
    pixels = read_idx(Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte"))
    rows = [int(i.split("/")[1]) for i in chosen.ids]
    wanted = {pixels[r].tobytes() for r in rows}
    assert {np.asarray(image).tobytes() for g in groups for image in g} == wanted


def test_low_data_config_plans_its_budget() -> None:
    """configs/low-data.yaml: 5 real images a class, each topped up to 45."""
    from conftest import REPO

    from diversynth.commands.preflight import preflight

    config = load_config(REPO / "configs" / "low-data.yaml")
    preflight(config, ["prompts", "train", "evaluate"])
    chosen = chosen_listing(config, "train", CLASSES)
    assert _counts(chosen) == [5] * 10
    assert class_budgets(config.prompts, class_counts(chosen.labels, 10), 10) == [40] * 10


@pytest.mark.slow  # the command line in a child process
def test_a_budget_of_nothing_stops_the_run_before_any_work(tmp_path: Path) -> None:
    from conftest import cli

    out = tmp_path / "run"
    result = cli("run", str(OFFLINE_CONFIG), "--out", str(out), "--set", "prompts.budget.fill_to=3",
                 "--set", "data.subset.per_class=5")  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: prompts.budget.fill_to: every class already has 3 real images or more "
        "(fewest: 5), so it asks for no synthetic images"
    )
    assert not out.exists()


def test_evaluation_without_a_train_folder_has_no_groups(tmp_path: Path) -> None:
    """A data root of val/ only (a test set to score a finished model on) is evaluated
    without frequency groups rather than failing for want of train/."""
    from diversynth.stages.evaluate.stage import _train_counts

    (tmp_path / "val" / "0").mkdir(parents=True)
    config = load_config(OFFLINE_CONFIG, ["data.format=imagefolder", f"data.root={tmp_path}"])
    assert _train_counts(config, None, CLASSES) is None
    (tmp_path / "train" / "0").mkdir(parents=True)
    with pytest.raises(DataError, match="no folder in"):  # a train/ folder lacking classes
        _train_counts(config, None, CLASSES)

"""The training loop: batches fixed by the step, exact resume after SIGKILL, DDP on two CPU
processes (gloo) against one process, gradient accumulation, synthetic scale."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from conftest import OFFLINE_CONFIG, REPO, set_args
from safetensors.torch import load_file

from diversynth.config import load_config
from diversynth.llm.llamacpp import free_port
from diversynth.pipeline import run_stages
from diversynth.run.rundir import RunDir
from diversynth.stages.train import synthetic
from diversynth.stages.train.sampling import MixedBatches
from diversynth.stages.train.synthetic import ShardImages, SyntheticDataError, select_images

# a small, fast training job on the finished run's classes and shards
SMALL = ["data.train_limit=128", "train.batch_size=32", "train.epochs=2",
         "train.checkpoint_every=4", "train.lr=0.02"]  # fmt: skip
# no batch norm: one process and two see the same arithmetic (BN would normalise each
# process's half batch on its own, as DDP without SyncBatchNorm does)
# every switch of a strong recipe: RandomResizedCrop, RandAugment, random erasing, mixup
# and cutmix within each domain, EMA, validation after each epoch
STRONG = ["train.recipe=resnet50-tv2", "train.augment.auto_augment=rand-m9-mstd0.5-inc1",
          "train.validate_every=1", "data.test_limit=200"]  # fmt: skip
VIT = ["train.model=vit_tiny_patch16_224",
       "train.model_kwargs={img_size: 32, patch_size: 8, depth: 2}",
       "train.optimizer=sgd", "train.lr=0.05", "train.label_smoothing=0.1",
       "train.tensorboard=false"]  # fmt: skip


def test_batches_are_a_function_of_the_step() -> None:
    full = MixedBatches(num_real=50, num_synthetic=7, real=6, synthetic=2, seed=3, epochs=2)
    batches = list(full)
    assert len(batches) == 2 * (50 // 6)
    real = [[i for i, _ in b if i < 50] for b in batches]
    assert all(len(r) == 6 for r in real)
    assert all(i < 50 for b in batches for i, _ in b[:6])  # real images first
    assert all(i >= 50 for b in batches for i, _ in b[6:])
    # any step, asked in any order of a fresh sampler, is the batch the iteration gave
    fresh = MixedBatches(num_real=50, num_synthetic=7, real=6, synthetic=2, seed=3, epochs=2)
    steps = list(range(len(batches)))[::-1]
    assert [fresh.batch(step) for step in steps] == [batches[step] for step in steps]
    first_epoch = [i for r in real[:8] for i in r]
    assert len(set(first_epoch)) == 48  # no real image twice within an epoch
    assert real[:8] != real[8:]  # a new order each epoch
    synthetic = [i - 50 for b in batches for i, _ in b[6:]]
    assert all(sorted(synthetic[k : k + 7]) == list(range(7)) for k in range(0, 28, 7))
    seeds = [s for b in batches for _, s in b]
    assert len(set(seeds)) == len(seeds)  # every image its own augmentation seed
    # a resumed sampler yields exactly the rest
    assert list(MixedBatches(50, 7, 6, 2, seed=3, epochs=2, start=5)) == batches[5:]
    # two processes: each a slice, real first; together the global batch
    for step in (0, 9):
        halves = [MixedBatches(50, 7, 6, 2, 3, 2, rank=r, world=2).batch(step) for r in (0, 1)]
        assert all(len(h) == 4 and h[0][0] < 50 <= h[-1][0] for h in halves)
        assert sorted(halves[0] + halves[1]) == sorted(batches[step])


def test_synthetic_scale_picks_images_in_proportion_to_each_class() -> None:
    """Each class keeps its share of the images it has (its budget), each class's images
    in manifest order; with equal classes, round-robin: the first of every class, then
    the second of every class, ..."""
    classes = np.array([2, 0, 0, 1, 2, 0, 1, 2, 2, 2])  # class 0: 3, class 1: 2, class 2: 5
    assert select_images(classes, 3).tolist() == [0, 1, 3]
    assert select_images(classes, 5).tolist() == [0, 1, 2, 3, 4]  # 1.5 / 1 / 2.5
    assert select_images(classes, 10).tolist() == list(range(10))
    equal = np.array([1, 0, 2, 1, 0, 2, 0, 1, 2])
    assert select_images(equal, 4).tolist() == [0, 1, 2, 4]  # 0, 1, 2 then class 0 again
    sizes = np.array([400, 100, 40, 2000, 60])  # a long-tailed budget
    many = np.random.default_rng(0).permutation(np.repeat(np.arange(5), sizes))
    counts = np.bincount(many[select_images(many, 650)], minlength=5)
    assert np.abs(counts - sizes * 650 / sizes.sum()).max() <= 1
    assert counts.sum() == 650


def test_a_smaller_scale_picks_a_subset_balanced_over_classes_and_strategies() -> None:
    """train.strategies: within a class the images are taken round-robin over its
    strategies (in proportion to what each has), so scale 1's images are among scale 2's,
    and each class's share of each strategy stays even at every scale."""
    rng = np.random.default_rng(1)
    # 4 classes, 3 strategies; the manifest groups a class's images by strategy
    classes = np.repeat(np.arange(4), 30)
    strategies = np.tile(np.repeat(np.arange(3), 10), 4)
    shuffled = rng.permutation(len(classes))
    classes, strategies = classes[shuffled], strategies[shuffled]
    picks = [set(select_images(classes, n, strategies).tolist()) for n in (12, 24, 60, 120)]
    assert all(small <= large for small, large in zip(picks, picks[1:], strict=False))
    for picked in picks:
        rows = np.array(sorted(picked))
        per_cell = np.bincount(classes[rows] * 3 + strategies[rows], minlength=12)
        assert per_cell.max() - per_cell.min() == 0, per_cell  # 1, 2, 5, 10 of each
    # without strategies: a class's images in manifest order, so a small count takes the
    # first strategy's images only (what the strategy round-robin corrects)
    ordered_classes = np.repeat(np.arange(4), 30)
    ordered_strategies = np.tile(np.repeat(np.arange(3), 10), 4)
    plain = select_images(ordered_classes, 12)
    assert set(ordered_strategies[plain].tolist()) == {0}
    mixed = select_images(ordered_classes, 12, ordered_strategies)
    assert np.bincount(ordered_strategies[mixed], minlength=3).tolist() == [4, 4, 4]
    # a strategy with twice the images in a class gets twice the places
    uneven = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1])
    chosen = select_images(np.zeros(9, dtype=np.int64), 3, uneven)
    assert np.bincount(uneven[chosen], minlength=2).tolist() == [1, 2]


def test_synthetic_images_are_read_by_the_offsets_in_the_manifest(
    run_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each manifest row says where its JPEG lies: the bytes there are the JPEG webdataset
    reads for that key, and training reads them without any tar header (a run from before
    the offsets reads the headers instead and gets the same images)."""
    import pyarrow.parquet as pq
    import webdataset as wds

    rows = pq.read_table(run_copy / "manifest.parquet").to_pylist()
    shards = run_copy / "shards"
    jpegs = {key: jpg for key, jpg in wds.WebDataset(
        [str(p) for p in sorted(shards.glob("*.tar"))], shardshuffle=False
    ).to_tuple("__key__", "jpg")}  # fmt: skip
    assert len(jpegs) == len(rows)
    for row in rows:
        with (shards / f"{row['shard']}.tar").open("rb") as tar:
            tar.seek(row["jpg_offset"])
            assert tar.read(row["jpg_size"]) == jpegs[row["key"]], row["key"]

    def no_headers(path: Path) -> None:
        raise AssertionError(f"read the tar headers of {path}")

    table = pq.read_table(run_copy / "manifest.parquet")
    with monkeypatch.context() as patch:
        patch.setattr(synthetic, "jpeg_locations", no_headers)
        by_offset = ShardImages(shards, table, lambda image: image.tobytes())
    old_run = table.drop_columns(["jpg_offset", "jpg_size"])
    by_header = ShardImages(shards, old_run, lambda image: image.tobytes())
    assert (
        by_offset.offsets.tolist() == by_header.offsets.tolist() == table["jpg_offset"].to_pylist()
    )
    assert by_offset.sizes.tolist() == by_header.sizes.tolist()
    assert [by_offset[i] for i in range(len(rows))] == [by_header[i] for i in range(len(rows))]
    assert [by_offset[i][1] for i in range(len(rows))] == [row["class_index"] for row in rows]

    cut = shards / f"{rows[-1]['shard']}.tar"
    cut.write_bytes(cut.read_bytes()[: rows[-1]["jpg_offset"]])  # a shard cut short
    with pytest.raises(SyntheticDataError, match=f"shards/{rows[-1]['shard']}.tar"):
        ShardImages(shards, table, lambda image: image)


def test_state_round_trip_continues_like_the_original(tmp_path: Path) -> None:
    """AdamW's state (step counts, moments, betas) and the RNG survive safetensors."""
    import timm

    from diversynth.stages.train.checkpoint import Resume, load_state, save_state

    def setup():
        torch.manual_seed(0)
        model = timm.create_model("resnet10t", num_classes=3)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(model, optimizer) -> None:
        x = torch.randn(4, 3, 32, 32)
        loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    model, optimizer = setup()
    step(model, optimizer)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    save_state(tmp_path / "state.safetensors", model, optimizer, scaler, Resume(1, 0, "fp"))
    step(model, optimizer)  # the original goes on (drawing its batch from the RNG)
    copy, copy_optimizer = setup()
    resume = load_state(tmp_path / "state.safetensors", copy, copy_optimizer, scaler)
    assert resume == Resume(1, 0, "fp")
    step(copy, copy_optimizer)
    for a, b in zip(model.state_dict().values(), copy.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the same step on the same batch: exact on every kernel set


def _train(run: Path, kit_overrides: list[str], extra: list[str]) -> dict:
    config = load_config(OFFLINE_CONFIG, [*kit_overrides, *SMALL, *extra])
    run_stages(config, RunDir(run), stages=["train"])
    return json.loads((run / ".state" / "train.json").read_text())["summary"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "train" / "model.safetensors"))


def test_synthetic_scale_sets_how_many_images_train(run_copy: Path,
                                                    kit_overrides: list[str]) -> None:  # fmt: skip
    summary = _train(run_copy, kit_overrides, ["train.synthetic_scale=0.25", "train.epochs=1"])
    assert summary["synthetic_available"] == 32 and summary["synthetic_scale"] == 0.25
    summary = _train(run_copy, kit_overrides, ["train.synthetic_scale=0", "train.epochs=1"])
    assert summary["synthetic_images"] == 0 and not summary["aux_bn"]
    with pytest.raises(SyntheticDataError, match=r"train.synthetic_scale: 6 x 128 .* hold 100"):
        _train(run_copy, kit_overrides, ["train.synthetic_scale=6"])


def test_compiled_training_matches_eager(
    run_copy: Path, kit_overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train.compile: true` trains the same model as eager mode, aux BN included: weights
    and both BNs' running statistics within 1e-3 (float32 sums in another order: two steps
    apart by 1.3e-6 with AVX2 kernels, by 4.2e-4 with torch's scalar ones,
    ATEN_CPU_CAPABILITY=default and ONEDNN_MAX_CPU_ISA=SSE41), the same checkpoint keys (no
    compile prefix), the same losses to 1e-4. torch.compile runs with the
    aot_eager backend (its graph capture and autograd, not inductor's C++ code generation,
    which takes over a minute for resnet10t on 2 cores)."""
    eager = tmp_path / "eager"
    shutil.copytree(run_copy, eager)
    short = ["train.epochs=1", "data.train_limit=48"]  # two steps
    want = _train(eager, kit_overrides, short)
    compile_calls = []

    def aot_eager(model: torch.nn.Module, **options):
        compile_calls.append(options)
        return real_compile(model, backend="aot_eager", **options)

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", aot_eager)
    got = _train(run_copy, kit_overrides, [*short, "train.compile=true"])
    assert compile_calls == [{"mode": None}]
    assert got["aux_bn"] and got["steps"] == want["steps"] == 2
    compiled, reference = _weights(run_copy), _weights(eager)
    assert compiled.keys() == reference.keys()
    assert any(".aux." in key for key in reference)
    worst = max((compiled[k].float() - reference[k].float()).abs().max().item() for k in reference)
    assert worst < 1e-3, f"compiled training's weights differ by up to {worst}"
    losses = [[json.loads(line)["loss"] for line in (run / "train" / "metrics.jsonl")
               .read_text().splitlines()] for run in (run_copy, eager)]  # fmt: skip
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(
    run_copy: Path, kit_overrides: list[str], tmp_path: Path
) -> None:
    """With every switch of a strong recipe on (random crops, RandAugment, erasing, mixup
    and cutmix, EMA, validation), a run killed at a random step and resumed ends with the
    weights, metrics and best checkpoint of an uninterrupted one, bit for bit."""
    reference = tmp_path / "reference"
    shutil.copytree(run_copy, reference)
    expected = _train(reference, kit_overrides, STRONG)
    assert expected["steps"] == 2 * (128 // 24)
    assert expected["ema"] and expected["mixup"] and expected["best_val_top1"] is not None
    lines = [
        json.loads(x) for x in (reference / "train" / "metrics.jsonl").read_text().splitlines()
    ]
    validated = [x for x in lines if "val_top1" in x]
    assert [x["epoch"] for x in validated] == [1.0, 2.0]  # after each epoch
    assert expected["best_val_top1"] == max(x["val_top1"] for x in validated)
    best = load_file(str(reference / "train" / "best.safetensors"))
    assert best.keys() == _weights(reference).keys()

    shutil.rmtree(run_copy / "train")  # the finished run's own training
    metrics = run_copy / "train" / "metrics.jsonl"
    args = [sys.executable, "-m", "diversynth", "train", str(OFFLINE_CONFIG), "--out",
            str(run_copy), *set_args([*kit_overrides, *SMALL, *STRONG])]  # fmt: skip
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    stop_at = random.Random().randint(5, 8)  # steps logged: past the first saved state
    while proc.poll() is None and time.monotonic() < deadline:
        steps = metrics.read_text().count('"loss"') if metrics.exists() else 0
        if steps >= stop_at:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run_copy / "train" / "state.safetensors").is_file()

    resumed = _train(run_copy, kit_overrides, STRONG)
    assert resumed["resumed_from_step"] in (4, 8)
    got, want = _weights(run_copy), _weights(reference)
    assert got.keys() == want.keys()
    # exact within one kernel set: every step sees the same batch, with the same
    # augmentation seeds and mixing draws, as in the uninterrupted run
    assert all(torch.equal(got[k], want[k]) for k in want), "resumed weights differ"
    assert metrics.read_text() == (reference / "train" / "metrics.jsonl").read_text()
    resumed_best = load_file(str(run_copy / "train" / "best.safetensors"))
    assert all(torch.equal(resumed_best[k], best[k]) for k in best), "best checkpoints differ"
    assert resumed["best_val_top1"] == expected["best_val_top1"]
    assert not (run_copy / "train" / "state.safetensors").exists()

    # TensorBoard shows each step once: the killed run's steps after its last state are purged
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_copy / "train" / "tensorboard"))
    events.Reload()
    steps = [event.step for event in events.Scalars("train/loss")]
    assert steps == list(range(1, expected["steps"] + 1))


def test_mixing_stays_within_each_domain() -> None:
    """Mixup and cutmix pair real images with real ones and synthetic with synthetic: the
    main batch norm's statistics come from real pixels only, exactly as if the synthetic
    part were not in the batch; across_domains blends the two."""
    import copy

    import timm

    from diversynth.config import MixupConfig
    from diversynth.models.aux_bn import convert_aux_bn, real_first
    from diversynth.stages.train.mixing import DomainMixup

    x = torch.cat([torch.rand(6, 3, 16, 16), 100 + torch.rand(4, 3, 16, 16)])  # real: < 1
    y = torch.arange(10) % 5
    for micro in range(20):  # mixup and cutmix draws
        mixed, soft = DomainMixup(MixupConfig(mixup_alpha=0.8, cutmix_alpha=1.0), 5, 0.1, 0)(
            x, y, 6, micro
        )
        assert mixed[:6].max() < 1 and mixed[6:].min() >= 100
        assert soft.shape == (10, 5) and torch.allclose(soft.sum(1), torch.ones(10))
    across = MixupConfig(mixup_alpha=0.8, across_domains=True)
    mixed, _ = DomainMixup(across, 5, 0.1, 0)(x, y, 6, 0)
    assert mixed[:6].max() > 1  # a real image took synthetic pixels
    # the same draws on a rerun: resume mixes as the first run did
    again = DomainMixup(MixupConfig(mixup_alpha=0.8, cutmix_alpha=1.0), 5, 0.1, 0)
    first = DomainMixup(MixupConfig(mixup_alpha=0.8, cutmix_alpha=1.0), 5, 0.1, 0)
    assert torch.equal(again(x, y, 6, 3)[0], first(x, y, 6, 3)[0])

    torch.manual_seed(0)
    plain = timm.create_model("resnet10t", num_classes=5)
    aux = convert_aux_bn(copy.deepcopy(plain))
    mixed, _ = DomainMixup(MixupConfig(mixup_alpha=0.8, cutmix_alpha=1.0), 5, 0.1, 0)(x, y, 6, 1)
    with real_first(aux, 6):
        aux(mixed)
    plain(mixed[:6])
    main = {k: v for k, v in aux.state_dict().items() if ".main." in k and "running" in k}
    want = plain.state_dict()
    assert main and all(torch.equal(v, want[k.replace(".main.", ".")]) for k, v in main.items())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ddp_on_two_processes_matches_one_process_and_survives_a_killed_rank_and_node(
    run_copy: Path, kit_overrides: list[str], tmp_path: Path
) -> None:
    """Tolerance: weights within 1e-4 after 5 steps (float32 sums in another order), for a
    model without batch norm; gradient accumulation over 2 micro-batches matches the same
    way. torchrun's own restart after rank 0 is killed, and `diversynth torchrun`'s after a
    whole node is lost and started again, end with the uninterrupted DDP weights, bit for
    bit (the same processes and kernels)."""
    runs = {name: tmp_path / name for name in ("one", "accumulate", "ddp", "restarted", "node")}
    for run in runs.values():
        shutil.copytree(run_copy, run)
    one = _train(runs["one"], kit_overrides, [*VIT, "train.epochs=1"])
    _train(runs["accumulate"], kit_overrides, [*VIT, "train.epochs=1", "train.accumulate=2"])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "-m", "diversynth", "train"]  # fmt: skip
    result = subprocess.run(
        [*torchrun, str(OFFLINE_CONFIG), "--out", str(runs["ddp"]),
         *set_args([*kit_overrides, *SMALL, *VIT, "train.epochs=1"])],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = json.loads((runs["ddp"] / ".state" / "train.json").read_text())["summary"]
    assert ddp["processes"] == 2 and ddp["steps"] == one["steps"] == 128 // 24
    want = _weights(runs["one"])
    for name in ("accumulate", "ddp"):
        got = _weights(runs[name])
        worst = max((got[k] - want[k]).abs().max().item() for k in want)
        assert worst < 1e-4, f"{name}: weights differ by up to {worst}"
    one_losses = [json.loads(x)["loss"] for x in (runs["one"] / "train" / "metrics.jsonl")
                  .read_text().splitlines()]  # fmt: skip
    ddp_losses = [json.loads(x)["loss"] for x in (runs["ddp"] / "train" / "metrics.jsonl")
                  .read_text().splitlines()]  # fmt: skip
    assert ddp_losses == pytest.approx(one_losses, abs=1e-4)

    # torchrun's c10d rendezvous and its own restart (workers share its store), a state
    # saved by time after every step (checkpoint_minutes), rank 0 killed once one is saved
    port = free_port()
    restarting = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
                  "--nproc-per-node", "2", "--max-restarts", "1", "--rdzv-backend", "c10d",
                  "--rdzv-endpoint", f"127.0.0.1:{port}", "-m", "diversynth", "train"]  # fmt: skip
    proc = subprocess.Popen(
        [*restarting, str(OFFLINE_CONFIG), "--out", str(runs["restarted"]),
         *set_args([*kit_overrides, *SMALL, *VIT, "train.epochs=1",
                    "train.checkpoint_every=1000000", "train.checkpoint_minutes=0.0001"])],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    state = runs["restarted"] / "train" / "state.safetensors"
    deadline = time.monotonic() + 240
    while not state.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no state was saved"
        time.sleep(0.02)
    workers = psutil.Process(proc.pid).children(recursive=True)
    rank0 = [w for w in workers if w.environ().get("RANK") == "0" and "diversynth" in w.cmdline()]
    assert len(rank0) == 1
    rank0[0].kill()
    stderr = proc.communicate(timeout=300)[1]
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.loads((runs["restarted"] / ".state" / "train.json").read_text())["summary"]
    first, second = summary["segments"]  # both starts are listed, not only the last
    assert (first["restart"], first["resumed_from_step"]) == (0, 0)
    assert second["restart"] == 1 and 0 < second["resumed_from_step"] < summary["steps"]
    got, want = _weights(runs["restarted"]), _weights(runs["ddp"])
    assert all(torch.equal(got[k], want[k]) for k in want)

    # two nodes on loopback, a process each; the second node (its launcher and worker) is
    # killed once a state is saved, and started again as a scheduler's requeue would
    port = free_port()

    def node(host: bool) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "diversynth", "torchrun", "--nnodes", "2",
             "--nproc-per-node", "1", "--max-restarts", "1", "--rdzv-backend", "c10d",
             "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "lost-node",
             "--rdzv-conf", f"is_host={int(host)}", "-m", "diversynth", "train",
             str(OFFLINE_CONFIG), "--out", str(runs["node"]),
             *set_args([*kit_overrides, *SMALL, *VIT, "train.epochs=1",
                        "train.checkpoint_every=1000000", "train.checkpoint_minutes=0.0001"])],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip

    head, second = node(host=True), node(host=False)
    state = runs["node"] / "train" / "state.safetensors"
    deadline = time.monotonic() + 240
    while not state.exists():
        assert head.poll() is None and time.monotonic() < deadline, "no state was saved"
        time.sleep(0.02)
    for process in [psutil.Process(second.pid), *psutil.Process(second.pid).children(True)]:
        process.kill()  # the launcher and its worker (in a session of its own)
    second.wait()
    again = node(host=False)
    for launcher in (head, again):
        stderr = launcher.communicate(timeout=300)[1]
        assert launcher.returncode == 0, stderr[-3000:]
    summary = json.loads((runs["node"] / ".state" / "train.json").read_text())["summary"]
    assert len(summary["segments"]) == 2 and summary["segments"][1]["resumed_from_step"] > 0
    got = _weights(runs["node"])
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_bad_training_settings_fail_clearly(run_copy: Path, kit_overrides: list[str]) -> None:
    from diversynth.stages.train.loop import TrainError

    with pytest.raises(TrainError, match="train.precision: float16 needs a GPU"):
        _train(run_copy, kit_overrides, ["train.precision=float16", "train.device=cpu"])
    from diversynth.config import ConfigError

    with pytest.raises(ConfigError, match="train.accumulate=3"):
        load_config(OFFLINE_CONFIG, [*kit_overrides, "train.batch_size=32", "train.accumulate=3"])
    with pytest.raises(ConfigError, match=r"train.recipe: unknown recipe; known: deit-small, "
                       r"resnet50-tv2 \(got 'resnet-101'\)"):  # fmt: skip
        load_config(OFFLINE_CONFIG, ["train.recipe=resnet-101"])
    with pytest.raises(ConfigError, match=r"train.ema.decay: Input should be less than 1"):
        load_config(OFFLINE_CONFIG, ["train.ema.decay=1"])
    # before any stage runs (the model built on the meta device)
    with pytest.raises(ConfigError, match=r"train.aux_norm: layernorm, but the model has no "
                       r"LayerNorm \('resnet10t'\)"):  # fmt: skip
        _train(run_copy, kit_overrides, ["train.aux_norm=layernorm"])
    # a quarter synthetic: a batch of 33 holds 8 synthetic and 25 real images, one unpaired
    with pytest.raises(TrainError, match=r"train.mixup: each process's micro-batch holds 25 "
                       r"real image\(s\)"):  # fmt: skip
        _train(run_copy, kit_overrides, ["train.batch_size=33", "train.mixup.mixup_alpha=0.2"])


def test_a_vit_trains_with_auxiliary_layernorm(run_copy: Path, kit_overrides: list[str]) -> None:
    from diversynth.models.aux_bn import AuxLayerNorm
    from diversynth.models.classifier import load_checkpoint

    summary = _train(run_copy, kit_overrides, [*VIT, "train.epochs=1",
                                               "train.aux_norm=layernorm"])  # fmt: skip
    assert summary["aux_bn"] and summary["synthetic_images"] > 0
    model, meta = load_checkpoint(run_copy / "train" / "model.safetensors")
    assert meta["aux_norm"] == "layernorm"
    assert sum(isinstance(m, AuxLayerNorm) for m in model.modules()) == 5  # 2 blocks x 2 + 1


def test_recipes_are_listed() -> None:
    from typer.testing import CliRunner

    from diversynth.commands.cli import app
    from diversynth.models.recipes import RECIPES

    result = CliRunner().invoke(app, ["recipes"])
    assert result.exit_code == 0
    assert all(name in result.output for name in RECIPES)
    # a recipe fills what the config leaves unset; what it sets wins
    config = load_config(OFFLINE_CONFIG, ["train.recipe=deit-small", "train.mixup.prob=0.5"])
    assert config.train.model == "resnet10t"  # set by the offline config
    assert config.train.optimizer == "adamw" and config.train.mixup.mixup_alpha == 0.8
    assert config.train.mixup.prob == 0.5 and config.train.augment.re_prob == 0.25

"""The `train` stage: a timm classifier on mixed batches of real and synthetic images.

Each optimizer step sees `batch_size` images (over all processes and `accumulate`
micro-batches), `synthetic_fraction` of them synthetic; an epoch is one pass over the real
training set. Every `checkpoint_every` steps the whole state goes to
`train/state.safetensors`; a rerun with the same settings resumes from it and ends with
the weights an uninterrupted run would have. Under torchrun each process trains on its
slice of every batch (DDP), and only the first process writes files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

import torch
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader

from diversynth.config import RunConfig, TrainConfig
from diversynth.data.eval_sets import eval_transform
from diversynth.data.real import dataset_labels, listed_dataset, real_listing
from diversynth.data.scan import readable_listing
from diversynth.data.subset import real_subset
from diversynth.errors import UsageError
from diversynth.models.aux_bn import has_aux_bn, real_first
from diversynth.models.classifier import (
    CheckpointError,
    convert_auxiliary,
    create_classifier,
    save_checkpoint,
    topk_accuracy,
)
from diversynth.models.device import pick_device
from diversynth.run.artifacts.leaks import leaked_keys
from diversynth.run.artifacts.records import ClassRecord, read_classes
from diversynth.run.progress import console, progress_bar
from diversynth.run.provenance import check_kept_work, made_with
from diversynth.run.rundir import RunDir, Timer, atomic_open
from diversynth.stages.train import distributed
from diversynth.stages.train.checkpoint import Resume, load_state, read_resume, save_state
from diversynth.stages.train.data import (
    model_preprocessing,
    train_transform,
)
from diversynth.stages.train.device_augment import DeviceAugment, loader_parts
from diversynth.stages.train.mixing import DomainMixup
from diversynth.stages.train.sampling import MixedBatches, class_aware_orders
from diversynth.stages.train.synthetic import synthetic_images


class TrainError(UsageError, ValueError):
    pass


def _autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.precision`, or None for plain float32."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if name == "float16" and device.type != "cuda":
        raise TrainError(f"train.precision: float16 needs a GPU; the device is {device.type}")
    return {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _batch_split(cfg: TrainConfig, has_synthetic: bool, world: int) -> tuple[int, int]:
    """Real and synthetic images per micro-batch, all processes together."""
    micro = cfg.batch_size // cfg.accumulate
    synthetic = round(micro * cfg.synthetic_fraction) if has_synthetic else 0
    real = micro - synthetic
    if real % world or synthetic % world:
        raise TrainError(
            f"train.batch_size: {cfg.batch_size} gives micro-batches of {real} real + "
            f"{synthetic} synthetic images, which do not split evenly over {world} processes"
        )
    return real, synthetic


def _check_batch_fits(cfg: TrainConfig, real_per: int, real: int, synthetic_per: int,
                      synthetic: int) -> None:  # fmt: skip
    """Each part of a micro-batch must fit in its data without repeating images (a batch
    of a million images grows past any memory before the first step)."""
    for part, per, available in (("real", real_per, real), ("synthetic", synthetic_per, synthetic)):
        if per > available:
            raise TrainError(
                f"train.batch_size: {cfg.batch_size} images a step hold {per} {part} ones, "
                f"more than the {available} {part} training images: lower train.batch_size "
                "(or train.synthetic_fraction)"
            )


def _check_mixup_parts(cfg: TrainConfig, real: int, synthetic: int) -> None:
    """timm's Mixup pairs each image with its mirror: every part it mixes (each process's
    real and synthetic images, or their sum across domains) needs an even count."""
    if not cfg.mixup.enabled:
        return
    parts = {"real and synthetic": real + synthetic} if cfg.mixup.across_domains else \
        {"real": real, "synthetic": synthetic}  # fmt: skip
    for part, count in parts.items():
        if count and (count < 2 or count % 2):
            raise TrainError(
                f"train.mixup: each process's micro-batch holds {count} {part} image(s); "
                "mixup and cutmix pair images within a part and need an even count of at "
                "least 2 (change train.batch_size or train.synthetic_fraction)"
            )


def _open_metrics(path: Path, keep_bytes: int) -> IO[bytes]:
    """The metrics log, cut back to what the resumed state had written (no line twice)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("ab")
    handle.truncate(keep_bytes)
    return handle


def _tensorboard(run: RunDir, cfg: TrainConfig, steps_done: int) -> Any:
    if not cfg.tensorboard:
        return None
    from torch.utils.tensorboard import SummaryWriter

    folder = run.train_dir / "tensorboard"
    if not steps_done and folder.is_dir():  # a fresh start: no curves of old runs
        # the writer's own files (SummaryWriter names each so); anything else is the user's
        for events in folder.glob("events.out.tfevents.*"):
            events.unlink()
    # purge_step hides the events a killed run logged after its last saved state
    return SummaryWriter(str(folder), purge_step=steps_done + 1 if steps_done else None)


def _resume_from(state_path: Path, fingerprint: str, current: dict[str, Any], forced: bool,
                 allow_version_change: bool) -> Resume | None:  # fmt: skip
    """The saved position to go on from, if there is one for these settings; it must have
    been made with the same libraries and device (or `allow_version_change`)."""
    resume = None if forced else read_resume(state_path)
    if resume is None or resume.fingerprint != fingerprint:
        return None
    change = check_kept_work(
        resume.made_with, current, f"train: the saved state (step {resume.step}) was",
        "--force train to start over", allow_version_change,
    )  # fmt: skip
    if change is not None:
        resume.version_changes.append(change)
    return resume


@dataclass
class _Data:
    """The real and synthetic images and which of them each micro-batch holds."""

    real: Any
    synthetic: Any | None
    batches: MixedBatches
    real_per: int  # real images per micro-batch, all processes together
    synthetic_per: int
    unreadable: int = 0  # real images left out (data.skip_unreadable)

    @property
    def real_per_epoch(self) -> int:
        """Real images an epoch uses: whole optimizer steps only, so up to one step's
        worth fewer than the set holds (the ones left over differ from epoch to epoch)."""
        return min(self.batches.per_epoch * self.real_per, len(self.real))


def real_split(config: RunConfig, run: RunDir | None, split: str, classes: list[Any],
               transform: Any) -> tuple[Any, int]:  # fmt: skip
    """A real split as the run uses it: data.subset's choice or the whole split, less the
    images that cannot be read under data.skip_unreadable (and how many those are)."""
    assert config.data is not None
    listing = real_subset(config, run, split, classes)
    if listing is None:
        listing = real_listing(config.data, split, classes)
    listing, unreadable = readable_listing(config, run, split, listing)
    return listed_dataset(config.data, listing, transform, classes), unreadable


def _say_epoch_use(data: _Data, cfg: TrainConfig) -> None:
    """One line when an epoch leaves some real images out (batches hold whole steps)."""
    used, have = data.real_per_epoch, len(data.real)
    if used >= have:
        return
    steps = data.batches.per_epoch // cfg.accumulate
    per_step = data.real_per * cfg.accumulate
    later = "differ from epoch to epoch" if cfg.epochs > 1 else "are not seen (1 epoch)"
    console.print(f"  train: an epoch uses {used:,} of the {have:,} real training images "
                  f"({steps:,} step(s) of {per_step:,} real images); the {have - used:,} left "
                  f"over {later}", highlight=False, soft_wrap=True)  # fmt: skip


def _data(config: RunConfig, run: RunDir, classes: list[ClassRecord], world: int) -> _Data:
    cfg = config.train
    assert config.data is not None
    transform = train_transform(cfg)
    real, unreadable = real_split(config, run, "train", classes, transform)
    if not len(real):
        raise TrainError(
            "train: the real training set is empty"
            + (" once the unreadable images are left out" if unreadable else "")
        )
    synthetic = None
    if cfg.synthetic_fraction > 0:
        leaked = leaked_keys(run) if cfg.exclude_leaks else None
        synthetic = synthetic_images(run, len(real), cfg.synthetic_scale, transform, leaked,
                                     cfg.strategies)  # fmt: skip
    real_per, synthetic_per = _batch_split(cfg, synthetic is not None, world)
    _check_batch_fits(cfg, real_per, len(real), synthetic_per, len(synthetic) if synthetic else 0)
    _check_mixup_parts(cfg, real_per // world, synthetic_per // world)
    orders = class_aware_orders(cfg.sampler, cfg.sampler_on, dataset_labels(real),
                                synthetic.labels if synthetic is not None else None)  # fmt: skip
    batches = MixedBatches(len(real), len(synthetic) if synthetic else 0, real_per,
                           synthetic_per, config.seed, cfg.epochs, cfg.accumulate,
                           real_order=orders[0], synthetic_order=orders[1])  # fmt: skip
    return _Data(real, synthetic, batches, real_per, synthetic_per, unreadable)


@dataclass
class _Trainee:
    """The model with what updates it, and its moving average when `train.ema` is on."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    scaler: torch.amp.GradScaler
    ema: ModelEmaV3 | None = None

    @property
    def final(self) -> torch.nn.Module:
        """The weights validation, evaluation and export use."""
        return self.ema.module if self.ema is not None else self.model


def _trainee(config: RunConfig, num_classes: int, aux: bool, device: torch.device,
             total_steps: int, autocast: torch.dtype | None) -> _Trainee:  # fmt: skip
    cfg = config.train
    torch.manual_seed(config.seed)  # the same initial weights on every run and process
    model = create_classifier(cfg.model, num_classes, **cfg.model_kwargs)
    if aux:
        try:
            convert_auxiliary(model, cfg.aux_norm)
        except CheckpointError as exc:
            raise TrainError(f"{exc} ({cfg.model!r})") from None
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer_v2(model, opt=cfg.optimizer, lr=cfg.lr,
                                    weight_decay=cfg.weight_decay, momentum=0.9)  # fmt: skip
    warmup = round(total_steps * cfg.warmup_fraction)
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=max(1, total_steps - warmup),
        warmup_t=warmup,
        warmup_lr_init=cfg.lr / 10,
        warmup_prefix=True,
        t_in_epochs=False,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=autocast == torch.float16)
    ema = None
    if cfg.ema.decay is not None:  # a copy of the model, both BN sets included
        ema = ModelEmaV3(model, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup, device=device)
    return _Trainee(model, optimizer, scheduler, scaler, ema)


def _start(trainee: _Trainee, state_path: Path, fingerprint: str, current: dict[str, Any],
           forced: bool, allow_version_change: bool) -> Resume:  # fmt: skip
    """Where training starts: a saved state of these settings (loaded into the trainee),
    or step 0."""
    resume = _resume_from(state_path, fingerprint, current, forced, allow_version_change)
    if resume is None:
        return Resume(step=0, metrics_bytes=0, fingerprint=fingerprint, made_with=current)
    loaded = load_state(state_path, trainee.model, trainee.optimizer, trainee.scaler,
                        trainee.ema.module if trainee.ema is not None else None)  # fmt: skip
    return replace(loaded, made_with=current, version_changes=resume.version_changes)


def _segment(path: Path, step: int, ranks: distributed.Ranks) -> list[dict[str, Any]]:
    """Record this start of training (the step it goes on from, the processes, torchrun's
    restart count) after those of the same training before it; the list so far. Written
    at the start, so a segment that ended before its first checkpoint is listed too."""
    if not ranks.main:
        return []
    lines = path.read_text().splitlines() if step and path.is_file() else []
    segments = [json.loads(line) for line in lines if line.strip()]
    segments.append({
        "resumed_from_step": step,
        "processes": ranks.world,
        "restart": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
        "host": socket.gethostname(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    })  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as handle:
        handle.write("".join(json.dumps(segment) + "\n" for segment in segments))
    return segments


def _network(model: torch.nn.Module, cfg: TrainConfig, ranks: distributed.Ranks,
             device: torch.device) -> torch.nn.Module:  # fmt: skip
    """What the batches go through: the model, wrapped for DDP and compiled as asked."""
    net: torch.nn.Module = model
    if ranks.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        # after the DDP wrap, as timm's train script does (DDP's buckets then split the
        # graph); states are saved from `model`, so their keys carry no compile prefix.
        # Aux BN's split is a module attribute: the compiled graph is guarded on it
        # torch.compile of a Module is a Module (an OptimizedModule); its hint says Callable
        net = cast(
            torch.nn.Module, torch.compile(net, mode=None if cfg.compile is True else cfg.compile)
        )
    return net


def run_train(config: RunConfig, run: RunDir, fingerprint: str = "", forced: bool = False,
              allow_version_change: bool = False) -> dict[str, Any]:  # fmt: skip
    cfg = config.train
    if config.data is None:
        raise TrainError("data: required by the train stage")
    ranks = distributed.current()
    device = pick_device(cfg.device, "train.device")
    if device.type == "cuda" and ranks.distributed:
        device = torch.device("cuda", ranks.local_rank)
    autocast = _autocast_dtype(cfg.precision, device)
    classes = read_classes(run)

    # 1. the data, and the batches every step takes from it
    data = _data(config, run, classes, ranks.world)
    if ranks.main:
        _say_epoch_use(data, cfg)
    total_micro = len(data.batches)
    total_steps = total_micro // cfg.accumulate
    # 2. the model, its optimizer and schedule, from a saved state when there is one
    trainee = _trainee(config, len(classes), cfg.aux and data.synthetic_per > 0, device,
                       total_steps, autocast)  # fmt: skip
    state_path = run.train_dir / "state.safetensors"
    resume = _start(trainee, state_path, fingerprint, made_with("train", config), forced,
                    allow_version_change)  # fmt: skip
    segments = _segment(run.train_dir / "segments.jsonl", resume.step // cfg.accumulate, ranks)
    # 3. the steps, with validation on the real test split every few epochs
    prep = model_preprocessing(cfg)
    meta = {"model": cfg.model, "model_kwargs": cfg.model_kwargs, "num_classes": len(classes),
            "aux_norm": cfg.aux_norm, **prep}  # fmt: skip
    validation, unreadable_test = None, 0
    if cfg.validate_every is not None and ranks.main:
        test, unreadable_test = real_split(config, run, "test", classes, eval_transform(prep))
        validation = DataLoader(test, batch_size=config.evaluate.batch_size,
                                num_workers=cfg.workers)  # fmt: skip
    mixup = None
    if cfg.mixup.enabled:
        mixup = DomainMixup(cfg.mixup, len(classes), cfg.label_smoothing, config.seed)
    steps = _Steps(cfg, trainee, _network(trainee.model, cfg, ranks, device), device,
                   autocast, ranks, resume, state_path, total_steps, mixup,
                   data.batches.per_epoch // cfg.accumulate, validation,
                   run.train_dir / "best.safetensors", meta)  # fmt: skip
    samples, collate, steps.on_device = loader_parts(data.real, data.synthetic, cfg, device)
    loader = DataLoader(
        samples,
        batch_sampler=replace(
            data.batches, start=resume.step, rank=ranks.rank, world=ranks.world
        ),  # fmt: skip
        num_workers=cfg.workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    steps.run(loader, run)
    # 4. the trained model (its moving average, with EMA on): the last; the best is saved
    # when validation finds it
    aux_bn = has_aux_bn(trainee.model)
    if ranks.main:
        save_checkpoint(run.checkpoint, trainee.final, {**meta, "aux_bn": aux_bn})
        state_path.unlink(missing_ok=True)  # the run is whole: nothing left to resume
    real, synthetic = data.real, data.synthetic
    return {
        "steps": total_steps,
        "resumed_from_step": resume.step // cfg.accumulate,
        "real_images": total_micro * min(data.real_per, len(real)),
        "real_training_set": len(real),  # the images data.subset chose, or the whole split
        "real_images_per_epoch": data.real_per_epoch,
        **(
            {"unreadable_left_out": {"train": data.unreadable, "test": unreadable_test}}
            if config.data.skip_unreadable
            else {}
        ),  # fmt: skip
        "sampler": cfg.sampler
        if cfg.sampler == "instance"
        else f"{cfg.sampler} ({cfg.sampler_on})",
        "synthetic_images": total_micro * data.synthetic_per,
        "synthetic_available": len(synthetic) if synthetic else 0,
        "synthetic_scale": round(len(synthetic) / len(real), 4) if synthetic else 0.0,
        "aux_bn": aux_bn,
        "processes": ranks.world,
        # each start of the stage that trained: a resume after a kill, a torchrun restart
        "segments": segments,
        "final_loss": steps.record["loss"] if steps.record else None,
        "ema": cfg.ema.decay is not None,
        "mixup": cfg.mixup.enabled,
        "best_val_top1": steps.resume.best_top1,
        "images_per_second": round(steps.images * ranks.world / max(steps.seconds, 1e-9), 1),
    }


@dataclass
class _Steps:
    """The training loop: micro-batches accumulated into optimizer steps, each step logged
    (metrics.jsonl, TensorBoard), a resumable state saved every `checkpoint_every` steps."""

    cfg: TrainConfig
    trainee: _Trainee
    net: torch.nn.Module
    device: torch.device
    autocast: torch.dtype | None
    ranks: distributed.Ranks
    resume: Resume
    state_path: Path
    total_steps: int
    mixup: DomainMixup | None
    steps_per_epoch: int
    validation: DataLoader | None  # the real test split (first process only)
    best_path: Path
    meta: dict[str, Any]  # what a saved model records
    images: int = 0
    seconds: float = 0.0
    record: dict[str, Any] | None = None
    on_device: DeviceAugment | None = None  # train.decode_on: device
    saved_at: float = field(default_factory=time.monotonic)  # the last state saved, or start

    def run(self, loader: DataLoader, run: RunDir) -> None:
        cfg, ranks = self.cfg, self.ranks
        step = self.resume.step // cfg.accumulate  # optimizer steps done
        self.trainee.scheduler.step_update(step)
        loss_fn: torch.nn.Module = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        if self.mixup is not None:  # soft targets, label smoothing included
            loss_fn = SoftTargetCrossEntropy()
        if not step and ranks.main:
            self.best_path.unlink(missing_ok=True)  # a fresh start: no best of an old run
        log = _open_metrics(run.train_metrics, self.resume.metrics_bytes) if ranks.main else None
        board = _tensorboard(run, cfg, step) if ranks.main else None
        timer = Timer()
        running_loss: torch.Tensor | float = 0.0  # a tensor once a micro-batch has added to it
        self.net.train()
        with contextlib.ExitStack() as cleanup, progress_bar(disable=not ranks.main) as bar:
            cleanup.callback(lambda: log and log.close())
            cleanup.callback(lambda: board and board.close())
            task = bar.add_task("train", total=self.total_steps, completed=step, unit="steps")
            for micro, (x, y, is_synthetic) in enumerate(loader, start=self.resume.step):
                if self.on_device is not None:  # the encoded images, decoded and augmented
                    x = self.on_device(x)
                last_of_step = (micro + 1) % cfg.accumulate == 0
                real = int((~is_synthetic).sum())
                if self.mixup is not None:
                    x, y = self.mixup(x, y, real, micro)
                running_loss += self._forward_backward(x, y, real, last_of_step, loss_fn)
                self.images += len(y)
                if not last_of_step:
                    continue
                step += 1
                assert isinstance(running_loss, torch.Tensor)  # a step follows a micro-batch
                mean_loss = self._optimizer_step(step, running_loss)
                running_loss = 0.0
                self._log(step, mean_loss, log, board)
                self._validate(step, log, board)
                if ranks.main and self._checkpoint_due(step):
                    assert log is not None
                    log.flush()
                    os.fsync(log.fileno())  # the state must never point past the log's end
                    trainee = self.trainee
                    save_state(self.state_path, trainee.model, trainee.optimizer, trainee.scaler,
                               replace(self.resume, step=micro + 1, metrics_bytes=log.tell()),
                               trainee.ema.module if trainee.ema is not None else None)  # fmt: skip
                    self.saved_at = time.monotonic()
                bar.update(task, completed=step)
        self.seconds = timer.seconds

    def _checkpoint_due(self, step: int) -> bool:
        """Every `checkpoint_every` steps, and once `checkpoint_minutes` have passed since
        the last save (or the start); never after the last step (the model is saved then)."""
        if step >= self.total_steps:
            return False
        minutes = self.cfg.checkpoint_minutes
        late = minutes is not None and time.monotonic() - self.saved_at >= minutes * 60
        return step % self.cfg.checkpoint_every == 0 or late

    def _forward_backward(
        self, x: torch.Tensor, y: torch.Tensor, real: int, last_of_step: bool,
        loss_fn: torch.nn.Module,
    ) -> torch.Tensor:  # fmt: skip
        cfg, device, autocast = self.cfg, self.device, self.autocast
        x = x.to(device, non_blocking=True)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True)
        # DDP averages gradients once per optimizer step, not once per micro-batch
        accumulating = self.ranks.distributed and not last_of_step
        # accumulating only under DDP (no_sync passes through torch.compile's wrapper);
        # Module's hints type an attribute as Tensor | Module
        ddp = cast(torch.nn.parallel.DistributedDataParallel, self.net)
        with ddp.no_sync() if accumulating else contextlib.nullcontext():
            with torch.autocast(device.type, dtype=autocast or torch.float32,
                                enabled=autocast is not None), \
                    real_first(self.trainee.model, real):  # fmt: skip
                loss = loss_fn(self.net(x), y) / cfg.accumulate
            self.trainee.scaler.scale(loss).backward()
        return loss.detach().float()

    def _optimizer_step(self, step: int, running_loss: torch.Tensor) -> float:
        """Apply the accumulated gradients; the mean loss of the step over all processes."""
        trainee = self.trainee
        trainee.scaler.step(trainee.optimizer)
        trainee.scaler.update()
        trainee.optimizer.zero_grad(set_to_none=True)
        trainee.scheduler.step_update(step)
        if trainee.ema is not None:
            trainee.ema.update(trainee.model, step=step)
        mean_loss = distributed.mean_across(running_loss, self.ranks)
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"train: loss is {mean_loss} at step {step}")
        return mean_loss

    def _log(self, step: int, mean_loss: float, log: IO[bytes] | None, board: Any) -> None:
        self.record = {"step": step, "loss": round(mean_loss, 5),
                       "lr": self.trainee.optimizer.param_groups[0]["lr"]}  # fmt: skip
        if log is not None:
            log.write((json.dumps(self.record) + "\n").encode())
        if board is not None:
            board.add_scalar("train/loss", mean_loss, step)
            board.add_scalar("train/lr", self.record["lr"], step)

    def _validate(self, step: int, log: IO[bytes] | None, board: Any) -> None:
        """Top-1 on the real test split at the end of every `validate_every` epochs and of
        the last step; the best model so far goes to train/best.safetensors."""
        epochs, at = divmod(step, self.steps_per_epoch)
        every = self.cfg.validate_every
        # validate_every is set whenever there is a validation loader
        if (
            self.validation is None
            or every is None
            or not (step == self.total_steps or (not at and epochs % every == 0))
        ):
            return  # fmt: skip
        model = self.trainee.final
        model.eval()
        scores = topk_accuracy(model, self.validation, self.device, f"validate epoch {epochs}")
        model.train()
        record = {"step": step, "epoch": round(step / self.steps_per_epoch, 3),
                  **{f"val_{k}": v for k, v in scores.items() if k.startswith("top")}}  # fmt: skip
        if log is not None:
            log.write((json.dumps(record) + "\n").encode())
        if board is not None:
            board.add_scalar("val/top1", scores["top1"], step)
        best = self.resume.best_top1
        if best is None or scores["top1"] > best:
            self.resume = replace(self.resume, best_top1=scores["top1"])
            meta = {**self.meta, "aux_bn": has_aux_bn(model), "step": step}
            save_checkpoint(self.best_path, model, meta)

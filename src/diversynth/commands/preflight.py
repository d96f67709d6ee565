"""Config checks that need a library or the data, run before the first selected stage:
a timm model name and its model_kwargs (the model built on the meta device), a diffusers
scheduler, settings the text-to-image pipeline would ignore, the real data's folders (every
split and class a selected stage reads, an image in each: data_scan), a batch larger than
the real data. Pydantic checks the rest when the config is read; these import timm or
diffusers, so they run only for the stages that use them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from diversynth.config import ConfigError, RunConfig
from diversynth.errors import shown
from diversynth.run.artifacts.records import ClassIdentity


def _scheduler_problem(name: str) -> str | None:
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config") or not name.endswith("Scheduler"):
        return f"no diffusers scheduler of that name (got {name!r})"
    return None


def _pipeline_problems(config: RunConfig) -> list[str]:
    """Not a text-to-image pipeline, or settings it would ignore (its configs are read, not
    its weights)."""
    from diversynth.models.pipeline_traits import (
        PipelineTraitsError,
        read_traits,
        setting_problems,
    )

    assert config.generate is not None
    try:
        return setting_problems(read_traits(config.generate.model), config.generate)
    except PipelineTraitsError as exc:
        return [str(exc)]


def _fashion_mnist_count(root: Path) -> int | None:
    """The number of training images, read from the IDX label file's header."""
    # here, not at the top: realdata loads torch, which only a run that trains needs
    from diversynth.data.real import FASHION_FILES, DataError, idx_length

    try:
        return idx_length(root / FASHION_FILES["train"][1])
    except (OSError, DataError):
        return None  # the layout check says what is missing


def _real_per_batch(cfg: Any) -> int:
    """Real images in a micro-batch, all processes together (train.loop._batch_split)."""
    micro = cfg.batch_size // cfg.accumulate
    return micro - round(micro * cfg.synthetic_fraction)


def _real_batch_problem(config: RunConfig, available: int | None) -> str | None:
    """A batch whose real part is larger than the whole real training set can hold;
    `available`: the real training images (None: unknown here)."""
    cfg = config.train
    real_per = _real_per_batch(cfg)
    if available is not None and real_per > available:
        return (f"{cfg.batch_size} images a step hold {real_per} real ones, more than the "
                f"{available} real training images: lower train.batch_size (got "
                f"{cfg.batch_size})")  # fmt: skip
    return None


def _train_available(config: RunConfig, classes: list[ClassIdentity]) -> int | None:
    """The real training images, as far as the batch check needs them, when no subset
    chooses them: Fashion-MNIST's from its header, an image folder's from its listing
    (counted up to one batch's real part), both cut to data.train_limit."""
    from diversynth.data.scan import train_images

    data = config.data
    assert data is not None
    if data.format == "imagefolder":
        return train_images(config, classes, _real_per_batch(config.train) + 1)
    available = _fashion_mnist_count(data.root)
    if data.train_limit:
        available = min(available or data.train_limit, data.train_limit)
    return available


# timm.create_model settings the train stage does not take: what the line says instead
_REFUSED_KWARGS = {
    "pretrained": "training starts from random weights and no train setting loads any; "
                  "pretrained weights come in as a checkpoint (`diversynth import-weights`), "
                  "which `diversynth evaluate-model CONFIG --checkpoint FILE` scores (and "
                  "`evaluate-model --model NAME --pretrained` scores timm's own)",
    "checkpoint_path": "timm would read the file with torch.load (a pickle); diversynth loads "
                       "weights as safetensors only, through `diversynth import-weights`",
    "num_classes": "the train stage sets it from the class list",
}  # fmt: skip
_UNEXPECTED = re.compile(r"unexpected keyword argument '([^']+)'")


def _meta_build(name: str, kwargs: dict[str, Any]) -> Any:
    import timm
    import torch

    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, num_classes=2, **kwargs)


def _builds(name: str, kwargs: dict[str, Any]) -> bool:
    try:
        _meta_build(name, kwargs)
    except Exception:  # noqa: BLE001 - whatever stops it
        return False
    return True


def _close_settings(name: str, key: str) -> str:
    """`; did you mean ...` from the model class's own settings (a build without kwargs)."""
    import difflib
    import inspect

    try:
        accepted = list(inspect.signature(type(_meta_build(name, {})).__init__).parameters)
    except Exception:  # noqa: BLE001 - a hint only
        return ""
    close = difflib.get_close_matches(key, [a for a in accepted if a != "self"], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _model_problems(cfg: Any) -> list[str]:
    """train.model_kwargs that timm refuses (a misspelt key), or that would load weights,
    and train.aux_norm: layernorm on a model without LayerNorm: found by building the model
    once on the meta device (no weights, no memory) rather than at the train stage, after
    the stages before it ran."""
    import timm
    import torch

    refused = [f"train.model_kwargs: {key!r} is not taken: {why}"
               for key, why in _REFUSED_KWARGS.items() if key in cfg.model_kwargs]  # fmt: skip
    if refused or not timm.is_model(cfg.model):  # hub names would download their configs
        return refused
    kwargs, unexpected = dict(cfg.model_kwargs), []
    refusal: Exception | None = None
    model = None
    for _ in range(len(kwargs) + 1):  # each try names one unknown key: leave it out, go on
        try:
            model = _meta_build(cfg.model, kwargs)
            break
        except TypeError as exc:
            found = _UNEXPECTED.search(str(exc))
            if found is None or found.group(1) not in kwargs:
                refusal = exc if kwargs else None
                break
            unexpected.append(found.group(1))
            kwargs.pop(found.group(1))
        except (ValueError, AssertionError, KeyError) as exc:
            refusal = exc if kwargs else None  # a value of model_kwargs, or not theirs
            break
        except Exception:  # noqa: BLE001 - the meta device cannot build it: the stage will
            break
    if refusal is not None and not _builds(cfg.model, {}):
        refusal = None  # not the settings' fault: the meta device cannot build the model
    lines = [f"train.model_kwargs: {shown(key, 60)} is not a setting of {cfg.model}"
             f"{_close_settings(cfg.model, key)}" for key in unexpected]  # fmt: skip
    if refusal is not None:
        lines.append(f"train.model_kwargs: {cfg.model} refuses {shown(kwargs)}: "
                     f"{' '.join(str(refusal).split())[:200]}")  # fmt: skip
    if model is not None and cfg.aux_norm == "layernorm":
        if not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules()):
            lines.append(f"train.aux_norm: layernorm, but the model has no LayerNorm "
                         f"({cfg.model!r}): use batchnorm for a model with batch norm")  # fmt: skip
    if model is not None and not lines and cfg.model_kwargs:
        problem = _forward_problem(model, cfg.image_size)
        if problem and _forward_problem(_meta_build(cfg.model, {}), cfg.image_size) is None:
            lines.append(f"train.model_kwargs: {cfg.model} with {shown(cfg.model_kwargs)} "
                         f"fails on a {cfg.image_size} px RGB batch: {problem}")  # fmt: skip
    return lines


def _forward_problem(model: Any, size: int) -> str | None:
    """What stops a training forward pass of a batch of two RGB images of `size` pixels,
    on the meta device (shapes only: a kwarg that builds but cannot run, as `in_chans: 1`
    or `drop_rate: 5`, fails here rather than at the train stage)."""
    import torch

    try:
        model.train()(torch.empty(2, 3, size, size, device="meta"))
    except Exception as exc:  # noqa: BLE001 - torch and timm raise many kinds
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    return None


def _class_identities(config: RunConfig) -> list[ClassIdentity] | None:
    """The class list's identities (index, name, wnid), as the classes stage will list
    them; None when the list cannot be read (the classes stage says why)."""
    from diversynth.data.classes.catalog import load_classes
    from diversynth.errors import DiversynthError

    try:
        return [entry.identity() for entry in load_classes(config.classes)]
    except (DiversynthError, ValueError):
        return None


def _real_data_problems(config: RunConfig, stages: list[str],
                        classes: list[ClassIdentity]) -> list[str]:  # fmt: skip
    """A subset that cannot be chosen (missing files, unknown classes, per_class beyond a
    class with strict), a budget that cannot be met, and a batch larger than the subset's
    real images, found before any stage runs."""
    budgeted = "prompts" in stages and config.prompts.budget.kind != "uniform"
    subset = config.data.subset if config.data else None
    trains = bool({"train", "evaluate"} & set(stages)) and subset is not None
    if config.data is None or not (budgeted or trains):
        return []
    from diversynth.data.subset import chosen_listing
    from diversynth.errors import UsageError
    from diversynth.stages import prompts
    from diversynth.stages.declaration import Estimate

    try:
        if trains:
            train = chosen_listing(config, "train", classes, quiet=True)
            chosen_listing(config, "test", classes, quiet=True)
            if train is not None and "train" in stages:
                problem = _real_batch_problem(config, len(train))
                if problem:
                    return [f"train.batch_size: {problem}"]
        if budgeted and prompts.STAGE.estimate is not None:  # it spreads the budget
            prompts.STAGE.estimate(config, Estimate(classes=len(classes)))
    except UsageError as exc:  # DataError, ConfigError, a list file that is no file
        return str(exc).splitlines()
    return []


def _device_problems(config: RunConfig, stages: list[str]) -> list[str]:
    """Devices the selected stages would use that this machine does not have (a ray
    engine's are its workers': not checked here)."""
    from diversynth.models.device import device_problem

    gen = config.generate
    wanted = []
    if "generate" in stages and gen is not None and gen.engine == "local":
        wanted.append(("generate.device", gen.device))
    clip_used = (
        ("classes" in stages and config.disambiguation_mode == "clip")
        or ("leaks" in stages and config.leaks.check)
        or ("generate" in stages and gen is not None and gen.clip_score and gen.engine == "local")
    )
    if clip_used and config.clip is not None:
        wanted.append(("clip.device", config.clip.device))
    if {"train", "evaluate"} & set(stages):
        wanted.append(("train.device", config.train.device))
    found = ((setting, device_problem(name)) for setting, name in wanted)
    return [f"{setting}: {problem}" for setting, problem in found if problem]


def preflight(config: RunConfig, stages: list[str]) -> None:
    """Raise ConfigError, one line per problem, for what the selected stages would meet."""
    problems = []
    if {"train", "evaluate"} & set(stages):
        from diversynth.models.classifier import timm_name_problem

        problem = timm_name_problem(config.train.model)
        if problem:
            problems.append(f"train.model: {problem}")
    if "generate" in stages and config.generate is not None and config.generate.scheduler:
        problem = _scheduler_problem(config.generate.scheduler)
        if problem:
            problems.append(f"generate.scheduler: {problem}")
    if {"prompts", "generate"} & set(stages) and config.generate is not None:
        problems += _pipeline_problems(config)
    problems += _device_problems(config, stages)
    if "train" in stages and not problems:
        problems += _model_problems(config.train)
    classes = _class_identities(config) if config.data is not None else None
    if classes is not None:
        # the data the selected stages read: split folders, class folders, an image in each
        from diversynth.data.scan import layout_problems

        layout = layout_problems(config, stages, classes)
        problems += layout
        subset = config.data.subset if config.data else None
        if "train" in stages and not layout and (subset is None or not subset.chooses_train):
            problem = _real_batch_problem(config, _train_available(config, classes))
            if problem:
                problems.append(f"train.batch_size: {problem}")
        if not problems:
            problems = _real_data_problems(config, stages, classes)
    if problems:
        raise ConfigError("\n".join(problems))

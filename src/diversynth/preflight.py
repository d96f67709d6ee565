"""Config checks that need a library or the data, run before the first selected stage:
a timm model name, a diffusers scheduler, settings the text-to-image pipeline would
ignore, a batch larger than the real data. Pydantic
checks the rest when the config is read; these import timm or diffusers, so they run only
for the stages that use them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diversynth.config import ConfigError, RunConfig

# timm takes hub and local weights by prefix as well as registered names
_TIMM_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


def timm_name_problem(name: str) -> str | None:
    import timm

    if name.startswith(_TIMM_PREFIXES) or timm.is_model(name):
        return None
    close = timm.list_models(f"*{name[:4]}*")[:3] if len(name) >= 4 else []
    hint = f"; close: {', '.join(close)}" if close else ""
    return f"not a timm model name (got {name!r}){hint}"


def _scheduler_problem(name: str) -> str | None:
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config") or not name.endswith("Scheduler"):
        return f"no diffusers scheduler of that name (got {name!r})"
    return None


def _pipeline_problems(config: RunConfig) -> list[str]:
    """Not a text-to-image pipeline, or settings it would ignore (its configs are read, not
    its weights)."""
    from diversynth.vision.pipeline_traits import (
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
    from diversynth.realdata import FASHION_FILES, idx_length

    try:
        return idx_length(root / FASHION_FILES["train"][1])
    except OSError:
        return None  # the train stage says what is missing


def _real_batch_problem(config: RunConfig) -> str | None:
    """A batch whose real part is larger than the whole real training set can hold."""
    data, cfg = config.data, config.train
    if data is None:
        return None
    available = _fashion_mnist_count(data.root) if data.format == "fashion-mnist" else None
    if data.train_limit:
        available = min(available or data.train_limit, data.train_limit)
    real_per = cfg.batch_size // cfg.accumulate - round(
        cfg.batch_size // cfg.accumulate * cfg.synthetic_fraction
    )
    if available is not None and real_per > available:
        return (f"{cfg.batch_size} images a step hold {real_per} real ones, more than the "
                f"{available} real training images: lower train.batch_size (got "
                f"{cfg.batch_size})")  # fmt: skip
    return None


def _aux_layernorm_problem(cfg: Any) -> str | None:
    """train.aux_norm: layernorm on a model without LayerNorm (it would stop the train
    stage after the stages before it ran): the model built on the meta device, no weights."""
    import timm
    import torch

    if not (cfg.aux_bn and cfg.aux_norm == "layernorm" and timm.is_model(cfg.model)):
        return None
    with torch.device("meta"):
        model = timm.create_model(cfg.model, num_classes=2, **cfg.model_kwargs)
    if any(isinstance(m, torch.nn.LayerNorm) for m in model.modules()):
        return None
    return (f"layernorm, but the model has no LayerNorm ({cfg.model!r}): use batchnorm for "
            "a model with batch norm")  # fmt: skip


def _real_data_problems(config: RunConfig, stages: list[str]) -> list[str]:
    """A subset that cannot be chosen (missing files, unknown classes, per_class beyond a
    class with strict) and a budget that cannot be met, found before any stage runs."""
    budgeted = "prompts" in stages and config.prompts.budget.kind != "uniform"
    subset = config.data.subset if config.data else None
    trains = bool({"train", "evaluate"} & set(stages)) and subset is not None
    if config.data is None or not (budgeted or trains):
        return []
    from diversynth.classes.catalog import load_classes
    from diversynth.prompts.budget import class_budgets
    from diversynth.real_subset import chosen_listing
    from diversynth.realdata import DataError

    classes = [entry.identity() for entry in load_classes(config.classes)]
    try:
        if trains:
            chosen_listing(config, "train", classes, quiet=True)
            chosen_listing(config, "test", classes, quiet=True)
        if budgeted:
            class_budgets(config.prompts, real_train_counts(config), len(classes))
    except (DataError, ConfigError) as exc:
        return str(exc).splitlines()
    return []


def real_train_counts(config: RunConfig) -> list[int]:
    """Real training images per class: the subset's, or the whole train split's."""
    from diversynth.classes.catalog import load_classes
    from diversynth.real_subset import chosen_listing, class_counts
    from diversynth.realdata import real_listing

    assert config.data is not None
    classes = [entry.identity() for entry in load_classes(config.classes)]
    train = chosen_listing(config, "train", classes, quiet=True)
    if train is None:  # no subset: every training image counts
        train = real_listing(config.data, "train", classes)
    return class_counts(train.labels, len(classes))


def preflight(config: RunConfig, stages: list[str]) -> None:
    """Raise ConfigError, one line per problem, for what the selected stages would meet."""
    problems = []
    if {"train", "evaluate"} & set(stages):
        problem = timm_name_problem(config.train.model)
        if problem:
            problems.append(f"train.model: {problem}")
    if "generate" in stages and config.generate is not None and config.generate.scheduler:
        problem = _scheduler_problem(config.generate.scheduler)
        if problem:
            problems.append(f"generate.scheduler: {problem}")
    if {"prompts", "generate"} & set(stages) and config.generate is not None:
        problems += _pipeline_problems(config)
    if "train" in stages:
        problem = _real_batch_problem(config)
        if problem:
            problems.append(f"train.batch_size: {problem}")
        problem = _aux_layernorm_problem(config.train) if not problems else None
        if problem:
            problems.append(f"train.aux_norm: {problem}")
    if not problems:
        problems = _real_data_problems(config, stages)
    if problems:
        raise ConfigError("\n".join(problems))

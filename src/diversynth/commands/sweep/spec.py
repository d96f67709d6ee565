"""A sweep file: a base config, the axes it varies, and the trials they make.

```yaml
base: offline.yaml                 # a config file (relative to this file), or a mapping
set: {data.train_limit: 100}       # settings every trial shares
vary:                              # axes: every combination is a trial
  train.synthetic_scale: [0, 1, 2]
  train.strategies: [[naive], [naive, cd, sd]]
  seed: [0, 1]
zip: [[train.lr, train.epochs]]    # axes that move together (equal lengths)
exclude: [{train.synthetic_scale: 2, seed: 1}]   # combinations left out
pool_by: [generate.steps]          # keys that make pools of their own
```

Every trial's config is built and validated before any work starts. The stages before
training run once per pool; a key that would change them is refused unless `pool_by`
names it. `seed` seeds training (weights, order, augmentation); the pool keeps the base
config's seed. Trials that are the same training (every strategy at scale 0) are one.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from diversynth.config import (
    CONFIG_BYTES,
    ConfigError,
    RunConfig,
    _format_errors,
    _set_dotted,
    fingerprinted,
    validate_config,
)
from diversynth.config.bounded_yaml import YamlError, load_yaml
from diversynth.data.userfiles import UserFileError, read_user_text
from diversynth.errors import shown
from diversynth.run.ray_cluster import checked_address
from diversynth.run.rundir import digest_json

# trials a sweep may hold without --yes (each one a training run)
CONFIRM_ABOVE = 64
MAX_TRIALS = 100_000

# the train settings that matter only when synthetic images are trained on
SYNTHETIC_ONLY = ("synthetic_scale", "synthetic_fraction", "strategies", "aux_bn", "aux_norm",
                  "exclude_leaks")  # fmt: skip


class SweepError(ConfigError):
    pass


class RayAddress(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # None: a local Ray instance
    address: Annotated[str | None, Field(max_length=1000), AfterValidator(checked_address)] = None
    connect_timeout: float = Field(default=60, gt=0, le=3600)  # seconds to reach and join it


Key = typing.Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[\w.-]+$")]


class SweepFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str | dict[str, Any]
    set: dict[Key, Any] = Field(default_factory=dict, max_length=1000)
    vary: dict[Key, list[Any]] = Field(min_length=1, max_length=64)
    zip: list[list[Key]] = Field(default_factory=list, max_length=64)
    exclude: list[dict[Key, Any]] = Field(default_factory=list, max_length=10_000)
    pool_by: list[Key] = Field(default_factory=list, max_length=64)
    engine: Literal["local", "ray"] = "local"
    parallel: int = Field(1, gt=0, le=1024)  # trials at once (local engine)
    gpus_per_trial: int = Field(1, ge=0, le=64)  # on a machine with GPUs
    # CPU threads of each trial (every engine; Ray's resource request too): CPU results
    # depend on the thread count, so one count makes a trial's weights the same wherever
    # and beside whatever it runs
    cpus_per_trial: int = Field(1, gt=0, le=1024)
    # processes a trial trains with (torchrun, DDP): one a GPU of gpus_per_trial; on a CPU,
    # gloo processes (each with cpus_per_trial threads)
    processes_per_trial: int = Field(1, gt=0, le=64)
    ray: RayAddress = Field(default_factory=lambda: RayAddress())


@dataclass(frozen=True)
class Trial:
    """One combination of axis values, and the training it is (shared by combinations
    that train alike)."""

    values: dict[str, Any]  # axis key -> value
    config: RunConfig  # the training's config (synthetic-only keys cleared at scale 0)
    id: str  # the training's identity: its folder name under trials/
    pool: str  # its pool's identity: its folder name under pools/

    def label(self) -> str:
        return _label(self.values)


def _label(values: dict[str, Any]) -> str:
    return ", ".join(f"{key}={json.dumps(value)}" for key, value in values.items())


@dataclass
class Sweep:
    spec: SweepFile
    path: Path
    trials: list[Trial]  # every combination, in the axes' order
    pools: dict[str, RunConfig] = field(default_factory=dict)  # pool id -> its config

    def trainings(self) -> dict[str, Trial]:
        """The distinct trainings, first combination of each."""
        unique: dict[str, Trial] = {}
        for trial in self.trials:
            unique.setdefault(trial.id, trial)
        return unique


def read_sweep(path: Path) -> SweepFile:
    """The sweep file, read and checked (one line per problem)."""
    try:
        data = load_yaml(read_user_text(path, "sweep file", CONFIG_BYTES),
                         f"sweep file: {str(path)!r}")  # fmt: skip
    except (UserFileError, YamlError) as exc:
        raise SweepError(str(exc)) from None
    if not isinstance(data, dict):
        raise SweepError(f"sweep file: {str(path)!r} must hold a mapping, got "
                         f"{type(data).__name__}")  # fmt: skip
    try:
        return SweepFile.model_validate(data)
    except ValidationError as exc:
        raise SweepError(_format_errors(exc, SweepFile)) from None


def _base_data(spec: SweepFile, path: Path) -> dict[str, Any]:
    if isinstance(spec.base, dict):
        return copy.deepcopy(spec.base)
    where = (path.parent / spec.base).expanduser()
    try:
        data = load_yaml(read_user_text(where, "base", CONFIG_BYTES), f"base: {str(where)!r}")
    except (UserFileError, YamlError) as exc:
        raise SweepError(str(exc).replace("config", "base", 1)) from None
    if not isinstance(data, dict):
        raise SweepError(f"base: {str(where)!r} must hold a config mapping")
    return data


def _annotation_models(annotation: Any) -> tuple[list[type[BaseModel]], bool]:
    """The config sections a field's type allows, and whether it is a mapping (whose keys
    are free: prompts.shares.cd, train.model_kwargs.drop_rate)."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is dict:
        return [], True
    if origin in (typing.Union, types.UnionType):
        models, mapping = [], False
        for arg in args:
            found, is_map = _annotation_models(arg)
            models += found
            mapping |= is_map
        return models, mapping
    if origin is typing.Annotated:
        return _annotation_models(args[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation], False
    return [], False


def key_problem(key: str) -> str | None:
    """Why a dotted key names no config setting (with a 'did you mean'), or None."""
    model: type[BaseModel] | None = RunConfig
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if model is None:
            return None  # below a mapping: any key
        fields = model.model_fields
        if part not in fields:
            where = ".".join(parts[:depth])
            prefix = f"{where}." if where else ""
            hint = difflib.get_close_matches(part, list(fields), n=1)
            known = f"; did you mean {prefix + hint[0]!r}?" if hint else ""
            return f"unknown key {shown(key)}{known}"
        models, mapping = _annotation_models(fields[part].annotation)
        if depth < len(parts) - 1 and not models and not mapping:
            return f"{shown('.'.join(parts[: depth + 1]))} is a setting, not a section"
        model = models[0] if models else None
    return None


def _normalised(value: Any) -> str:
    """A value as exclude compares it: numbers by value (2 matches 2.0)."""

    def plain(item: Any) -> Any:
        if isinstance(item, bool) or not isinstance(item, int | float | list | dict):
            return item
        if isinstance(item, list):
            return [plain(v) for v in item]
        if isinstance(item, dict):
            return {k: plain(v) for k, v in item.items()}
        return float(item)

    return json.dumps(plain(value), sort_keys=True, default=str)


def _combinations(spec: SweepFile) -> list[dict[str, Any]]:
    """Every combination of the axes, zipped axes moving together, less the excluded."""
    for key, values in spec.vary.items():
        if not values:
            raise SweepError(f"vary.{key}: no values (an axis needs one at least)")
        if problem := key_problem(key):
            raise SweepError(f"vary: {problem}")
    for dotted in [*spec.set, *spec.pool_by]:
        if problem := key_problem(dotted):
            raise SweepError(f"{'set' if dotted in spec.set else 'pool_by'}: {problem}")
    zipped: set[str] = set()
    for group in spec.zip:
        for key in group:
            if key not in spec.vary:
                raise SweepError(f"zip: {shown(key)} is not an axis of vary")
            if key in zipped:
                raise SweepError(f"zip: {shown(key)} is in two zip groups")
            zipped.add(key)
        lengths = {len(spec.vary[key]) for key in group}
        if len(lengths) > 1:
            raise SweepError(f"zip: {', '.join(group)} have {sorted(lengths)} values: zipped "
                             "axes need as many values each")  # fmt: skip
    axes: list[list[dict[str, Any]]] = []
    for key, values in spec.vary.items():
        zipped_with = next((g for g in spec.zip if key in g), None)
        if zipped_with is None:
            axes.append([{key: value} for value in values])
        elif key == zipped_with[0]:
            axes.append([{k: spec.vary[k][i] for k in zipped_with} for i in range(len(values))])
    for entry in spec.exclude:
        unknown = [key for key in entry if key not in spec.vary]
        if unknown:
            raise SweepError(f"exclude: {shown(unknown[0])} is not an axis of vary")
    count = 1
    for axis in axes:
        count *= len(axis)
    if count > MAX_TRIALS:
        raise SweepError(f"vary: {count:,} combinations, more than {MAX_TRIALS:,}")
    combos = []
    for parts in itertools.product(*axes):
        merged = {k: v for part in parts for k, v in part.items()}
        ordered = {key: merged[key] for key in spec.vary}
        if not any(all(_normalised(ordered[k]) == _normalised(v) for k, v in entry.items())
                   for entry in spec.exclude):  # fmt: skip
            combos.append(ordered)
    if not combos:
        raise SweepError("exclude: every combination is excluded: the sweep has no trial")
    return combos


def _validated(data: dict[str, Any], what: str) -> RunConfig:
    try:
        return validate_config(data)
    except ConfigError as exc:
        lines = str(exc).splitlines()
        raise SweepError("\n".join(f"{what}: {line}" for line in lines)) from None


def _with(data: dict[str, Any], values: dict[str, Any], what: str) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for key, value in values.items():
        try:
            _set_dotted(data, key, copy.deepcopy(value))
        except ConfigError:
            raise SweepError(f"{what}: {shown(key)}: a part of it is a setting, not a "
                             "section") from None  # fmt: skip
    return data


def trains_on_synthetic(config: RunConfig) -> bool:
    return config.train.uses_synthetic


def training_identity(config: RunConfig, pool: str) -> str:
    """What a trial's weights depend on: its config less what cannot matter (the settings
    of synthetic images when it trains on none) and its pool. Two combinations with one
    identity are one training."""
    data = fingerprinted(config)
    data.pop("name", None)
    data.pop("report", None)
    if not trains_on_synthetic(config):
        for key in SYNTHETIC_ONLY:
            data["train"].pop(key, None)
    return digest_json({"config": data, "pool": pool})[:12]


def real_only(config: RunConfig) -> RunConfig:
    """The config a real-only trial records: its synthetic settings cleared, so that it
    says what it trained on."""
    if trains_on_synthetic(config):
        return config
    train = config.train.model_copy(update={"synthetic_scale": 0.0, "strategies": None})
    return config.model_copy(update={"train": train})


def pool_signature(config: RunConfig, base_seed: int) -> str:
    """The settings the pool stages read, with the pool's seed: equal signatures make
    the same classes, prompts, images and leak check."""
    from diversynth.pipeline import STAGES

    data = fingerprinted(config)
    data["seed"] = base_seed
    sections: dict[str, Any] = {}
    for stage in STAGES:
        if stage.pooled:
            sections[stage.name] = {s: data.get(s) for s in stage.sections_in(config)}
    # the leaks stage compares the images with these sets
    sections["leaks"]["sets"] = data["evaluate"]["sets"]
    return digest_json(sections)


def _pool_keys_problem(spec: SweepFile, base: dict[str, Any], base_config: RunConfig) -> str | None:
    """An axis (not in pool_by) whose values change a pool stage: one line naming it."""
    reference = pool_signature(base_config, base_config.seed)
    for key, values in spec.vary.items():
        if key in spec.pool_by or key == "seed":
            continue
        for value in values:
            config = _validated(_with(base, {key: value}, f"vary.{key}"), f"vary.{key}={value}")
            if pool_signature(config, base_config.seed) != reference:
                return (f"vary: {key} changes the stages before training (classes, prompts, "
                        "generate, leaks), which the trials share: add it to pool_by (a pool "
                        "of images for each value) or fix it under set")  # fmt: skip
    return None


def expand(spec: SweepFile, path: Path) -> Sweep:
    """Every trial's config, built and validated; SweepError (one line a problem) first."""
    base = _with(_base_data(spec, path), spec.set, "set")
    unused = [key for key in spec.pool_by if key not in spec.vary]
    if unused:
        raise SweepError(f"pool_by: {shown(unused[0])} is not an axis of vary")
    combos = _combinations(spec)
    base_config = _validated(base, "base")
    trials: list[Trial] = []
    pools: dict[str, RunConfig] = {}
    for number, values in enumerate(combos, start=1):
        what = f"trial {number} ({_label(values)})"
        config = real_only(_validated(_with(base, values, what), what))
        pool_values = {key: values[key] for key in spec.pool_by}
        pool_config = _validated(_with(base, pool_values, what), what)
        pool = digest_json(pool_signature(pool_config, base_config.seed))[:12]
        pools.setdefault(pool, pool_config)
        identity = training_identity(config, pool)
        # the trial's report is titled by its id and values (the first combination's)
        named = config.model_copy(update={"name": f"{identity}: {_label(values)}"[:200]})
        trials.append(Trial(values, named, identity, pool))
    if problem := _pool_keys_problem(spec, base, base_config):
        raise SweepError(problem)
    return Sweep(spec, path, trials, pools)

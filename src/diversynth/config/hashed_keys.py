"""Which config keys a fingerprint hashes, so that a new setting leaves old runs as they are.

A run directory records each stage's fingerprint, a hash of the config sections the stage
reads (pipeline.fingerprint). Hashing every key pydantic dumps would make each release
that adds a setting change every fingerprint: every finished stage would run again, and
generate would discard every shard as "made for other settings" (GPU hours). So a key
that is not in hashed_keys.txt (the schema's keys when that list was frozen, 5 December
2026) is left out of the hash while a config does not set it (or sets its default); set
to anything else, it counts like any other key.

Never add to the list. A key removed or renamed changes fingerprints: map it back in
`config.fingerprinted` (as train.aux_bn is), and the test of the list says so.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo


@cache
def hashed_keys() -> frozenset[str]:
    """Dotted keys ("train.ema", "evaluate.sets[].root") hashed whatever their value."""
    text = (Path(__file__).parent / "hashed_keys.txt").read_text()
    return frozenset(line for line in text.splitlines() if line)


def leave_out_new_defaults(model: BaseModel, data: dict[str, Any], prefix: str = "") -> None:
    """Remove from `data` (`model` dumped as JSON) each key added since the list was
    frozen that is at its default, at every depth (sections, and sections in lists)."""
    for name, field in type(model).model_fields.items():
        if name not in data:
            continue
        key, value = prefix + name, getattr(model, name)
        if key not in hashed_keys():
            if _at_default(model, name, field):
                del data[name]
            continue
        if isinstance(value, BaseModel) and isinstance(data[name], dict):
            leave_out_new_defaults(value, data[name], key + ".")
        elif isinstance(value, list) and isinstance(data[name], list):
            for item, dumped in zip(value, data[name], strict=True):
                if isinstance(item, BaseModel) and isinstance(dumped, dict):
                    leave_out_new_defaults(item, dumped, key + "[].")


def _at_default(model: BaseModel, name: str, field: FieldInfo) -> bool:
    """Not given in the config (whatever a validator made of the default: a resolved
    path, an "auto" filled in), or given as the default itself."""
    if name not in model.model_fields_set:
        return True
    if field.default_factory_takes_validated_data:  # no default without the rest of the section
        return False
    return bool(getattr(model, name) == field.get_default(call_default_factory=True))


def sections_in(tp: Any) -> Iterator[tuple[type[BaseModel], bool]]:
    """The sections a field's type holds: (model, whether as the items of a list)."""
    origin = get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        yield tp, False
    elif origin is list:
        for arg in get_args(tp):
            for model, _ in sections_in(arg):
                yield model, True
    elif origin is typing.Annotated:
        yield from sections_in(get_args(tp)[0])
    elif origin in (typing.Union, types.UnionType):
        for arg in get_args(tp):
            yield from sections_in(arg)


def schema_keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every dotted key of a config schema, in the form hashed_keys.txt lists them."""
    for name, field in model.model_fields.items():
        yield prefix + name
        for section, in_list in sections_in(field.annotation):
            yield from schema_keys(section, prefix + name + ("[]." if in_list else "."))

"""The configuration reference (docs/configuration.md), written from the schema itself.

Every key of `RunConfig` and its sections, in the order the schema declares them, with its
type, bounds and default read from the pydantic fields, and its note taken from the
`# comments` written above and beside the field in the source, and each section's
docstring. So the page cannot say other than the code: `scripts/config_reference.py
--check` (and tests/test_docs.py) fail when the page is stale.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import json
import sys
import tokenize
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from diversynth import config
from diversynth.config.hashed_keys import sections_in

GENERATED_BY = "scripts/config_reference.py"

HEADER = f"""\
# Configuration reference

<!-- Written by {GENERATED_BY} from the schema in src/diversynth/config/__init__.py:
do not edit by hand, run `.venv/bin/python {GENERATED_BY}` after changing the schema. -->

A run config is a YAML file of the sections below; `--set KEY=VALUE` sets any key on the
command line (`--set train.epochs=3`, the value read as YAML). Every key is checked before
any work starts: a misspelt key, a wrong type, a value out of its bounds or a missing path
fails at once with one line naming the key and the value, for example
`error: generate.stpes: unknown key (value: 3); did you mean 'steps'?`. The run directory's
`config.yaml` holds the config as it ran, every default filled in.

Each entry gives the key, what it takes, its default, and the note the schema carries for
it. A section whose default is "absent" is left out unless the config gives it; a stage
that needs it says so. Text settings hold at most {config.MAX_TEXT:,} characters.
"""

# what an AfterValidator of the schema checks, by the validator's name
VALIDATORS = {
    "_resolve_path": "must exist",
    "_readable_list": "a regular file of a readable size",
    "_model_ref": "a hub id, or a local folder or file with safetensors weights",
    "_clip_ref": "an open_clip name, `hf-hub:ORG/NAME` or `local-dir:PATH`",
    "checked_address": "a Ray address",
}
# bounds the environment can move, by the name the source gives them
MOVABLE_BOUNDS = {"MAX_IMAGES": "DIVERSYNTH_MAX_IMAGES"}
COMPARISONS = (("gt", "<"), ("ge", "<="), ("lt", "<"), ("le", "<="))


# -------------------------------------------------------------------------- the source


@cache
def _module_source(path: str) -> tuple[ast.Module, list[str], dict[int, str]]:
    """A module's syntax tree, its lines, and its comments by line (pragmas left out)."""
    text = Path(path).read_text(encoding="utf-8")
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            body = token.string.lstrip("#").strip()
            if not body.startswith(("fmt:", "noqa", "type:")):
                comments[token.start[0]] = body
    return ast.parse(text), text.splitlines(), comments


@cache
def _class_source(model: type[BaseModel]) -> dict[str, tuple[str, dict[str, str]]]:
    """Field name -> (its comments, the source of its Field(...) keywords), for the fields
    `model`'s own class body declares."""
    path = inspect.getsourcefile(model)
    if path is None:
        return {}
    tree, lines, comments = _module_source(path)
    node = next(
        (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == model.__name__),
        None,
    )
    if node is None:
        return {}
    found: dict[str, tuple[str, dict[str, str]]] = {}
    for statement in node.body:
        if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
            continue
        above: list[str] = []  # the comment lines directly above the field, nearest last
        line = statement.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#"):
            if line in comments:
                above.insert(0, comments[line])
            line -= 1
        end = statement.end_lineno or statement.lineno
        beside = [comments[n] for n in range(statement.lineno, end + 1) if n in comments]
        keywords: dict[str, str] = {}
        if isinstance(statement.value, ast.Call):
            keywords = {k.arg: ast.unparse(k.value) for k in statement.value.keywords if k.arg}
        note = "; ".join(part for part in (" ".join(above), "; ".join(beside)) if part)
        found[statement.target.id] = (note, keywords)
    return found


def _field_source(model: type[BaseModel], name: str) -> tuple[str, dict[str, str]]:
    """The comments and Field keywords of a field, from the class that declares it."""
    for cls in model.__mro__:
        if isinstance(cls, type) and issubclass(cls, BaseModel) and name in _class_source(cls):
            return _class_source(cls)[name]
    return "", {}


@cache
def _movable_default(name: str) -> str | None:
    """A bound the environment can move, as it is when the environment does not: the
    default of its `os.environ.get(...)` in the schema's module."""
    tree, _, _ = _module_source(inspect.getsourcefile(config) or "")
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            for call in ast.walk(node.value):
                if (
                    isinstance(call, ast.Call)
                    and ast.unparse(call.func).endswith("environ.get")
                    and len(call.args) == 2
                    and isinstance(call.args[1], ast.Constant)
                ):
                    return _number(call.args[1].value)
    return None


# --------------------------------------------------------------------------- the types


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1000:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return repr(value)
    if isinstance(value, int) and value >= 2**32 and (value & (value - 1)) == 0:
        return f"2**{value.bit_length() - 1}"
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _constraints(metadata: list[Any], keywords: dict[str, str]) -> list[str]:
    """Bounds and checks of a field or of a member of a union: `0 < x <= 64`, ..."""
    low = high = ""
    length: dict[str, str] = {}
    said: list[str] = []
    movable: set[str] = set()
    for item in metadata:
        if isinstance(item, FieldInfo):  # Annotated[str, Field(min_length=1)]
            said += _constraints(list(item.metadata), {})
            continue
        for kind, op in COMPARISONS:
            if isinstance(item, getattr(annotated_types, kind.capitalize())):
                value = _number(getattr(item, kind))
                env = MOVABLE_BOUNDS.get(keywords.get(kind, ""))
                if env:
                    movable.add(env)
                    value = _movable_default(keywords[kind]) or value
                if kind in ("gt", "ge"):
                    low = f"{value} {op} "
                else:
                    high = f" {op} {value}"
        if isinstance(item, annotated_types.MinLen):
            length["low"] = f"{_number(item.min_length)} <= "
        elif isinstance(item, annotated_types.MaxLen):
            length["high"] = f" <= {_number(item.max_length)}"
        elif getattr(item, "pattern", None):
            said.append(f"matching `{item.pattern}`")
        elif type(item).__name__ == "AfterValidator":
            name = getattr(item.func, "__name__", "")
            if name in VALIDATORS:
                said.append(VALIDATORS[name])
    ranges = [f"`{low}x{high}`"] if low or high else []
    if length:
        ranges.append(f"`{length.get('low', '')}length{length.get('high', '')}`")
    ranges += [f"`{env}` raises the bound" for env in sorted(movable)]
    return ranges + said


def _literal(value: Any) -> str:
    return f"`{value}`" if isinstance(value, str) else f"`{json.dumps(value)}`"


def _type(tp: Any, metadata: tuple[Any, ...] = (), inner: bool = False) -> str:
    """A type as a config writer reads it: `int`, `float or null`, one of `a`, `b`, ...
    (`inner`: in parentheses when it is a choice, as a list's items are)."""
    origin = get_origin(tp)
    if origin is typing.Annotated:
        base, *more = get_args(tp)
        return _type(base, (*more, *metadata), inner)
    checks = _constraints(list(metadata), {})
    suffix = f" ({', '.join(checks)})" if checks else ""
    if origin in (typing.Union, types.UnionType):
        members = [m for m in get_args(tp) if m is not type(None)]
        said = [_type(m) for m in members]
        if len(members) < len(get_args(tp)):
            said.append("null")
        text = " or ".join(said)
        return (f"({text})" if inner else text) + suffix
    if origin is Literal:
        values = [_literal(v) for v in get_args(tp)]
        if len(values) == 1:
            return values[0] + suffix
        text = "one of " + ", ".join(values)
        return (f"({text})" if inner else text) + suffix
    if origin is dict:
        key, value = get_args(tp)
        return f"mapping of {_type(key, inner=True)} to {_type(value, inner=True)}{suffix}"
    if origin in (list, tuple):
        args = [_type(a, inner=True) for a in get_args(tp) if a is not Ellipsis]
        if origin is tuple and len(args) == 2 and args[0] == args[1]:
            return f"pair of {args[0]}{suffix}"
        return f"{'list' if origin is list else 'tuple'} of {', '.join(args)}{suffix}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return f"section{suffix}"
    if tp is Any:
        return f"any{suffix}"
    if tp is None or tp is type(None):
        return "null"
    name = {str: "text", Path: "path", bool: "bool", int: "int", float: "float"}
    return name.get(tp, getattr(tp, "__name__", str(tp))) + suffix


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, str):  # as YAML takes it unquoted
        return f"`{value}`"
    if isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value, ensure_ascii=False)}`"


# ---------------------------------------------------------------------------- the page


def _prose(text: str) -> str:
    """Source text as one Markdown paragraph (a `<` is never taken for a tag)."""
    return " ".join(text.split()).replace("<", "&lt;")


def _doc(model: type[BaseModel]) -> str:
    doc = model.__dict__.get("__doc__")
    return _prose(inspect.cleandoc(doc)) if doc else ""


def _entry(model: type[BaseModel], name: str, key: str) -> tuple[str, tuple | None]:
    """A field's line, and (section, its key) when the field holds a section."""
    field = model.model_fields[name]
    comment, keywords = _field_source(model, name)
    sections = list(sections_in(field.annotation))
    if sections:
        section, as_list = sections[0]
        shown = f"{key}[]" if as_list else key
        anchor = shown.replace(".", "").replace("[]", "").lower()
        what = f"{'list of sections' if as_list else 'section'}, [below](#{anchor})"
        nullable = type(None) in get_args(field.annotation)
        if field.is_required():
            default = "required"
        elif nullable and field.get_default() is None:
            default = "absent"
        else:
            default = "`[]`" if as_list else "its defaults"
        text = f"{what}{' or null' if nullable else ''}; {default}"
        nested: tuple | None = (section, shown)
    else:
        checks = _constraints(list(field.metadata), keywords)
        kind = _type(field.annotation) + (f", {', '.join(checks)}" if checks else "")
        default = _default(field)
        text = f"{kind}; {default if default == 'required' else 'default ' + default}"
        nested = None
    note = _prose(comment)
    return f"- `{key}` ({text}){': ' + note if note else ''}", nested


def _walk(model: type[BaseModel], prefix: str, title: str, depth: int, page: list[str]) -> None:
    lines, nested = [], []
    for name in model.model_fields:
        line, section = _entry(model, name, f"{prefix}{name}")
        lines.append(line)
        if section:
            nested.append(section)
    page.append(f"{'#' * depth} {title}\n")
    doc = _doc(model)
    if doc:
        page.append(f"{doc}\n")
    page.append("\n".join(lines) + "\n")
    for section, key in nested:
        _walk(section, f"{key}.", f"`{key}`", min(depth + 1, 3) if prefix else 2, page)


def render() -> str:
    """docs/configuration.md as the schema makes it now."""
    page = [HEADER]
    _walk(config.RunConfig, "", "Top level", 2, page)
    return "\n".join(page)


def main(argv: list[str] | None = None, page: Path | None = None) -> int:
    """Write the page, or with --check say whether the page written is current (exit 1
    if not)."""
    parser = argparse.ArgumentParser(prog=GENERATED_BY, description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    parser.add_argument("--out", type=Path, default=page, required=page is None,
                        help="the page (default: %(default)s)")  # fmt: skip
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else None
        if current != text:
            print(f"{args.out} is stale: run {GENERATED_BY} to write it again", file=sys.stderr)
            return 1
        print(f"{args.out} is current")
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0

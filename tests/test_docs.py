"""The manual: the configuration reference is what the schema makes now and names every
key, the config snippets of the README and docs/ use only keys the schema has, the site
builds with `mkdocs build --strict` (broken links and anchors, pages left out of the nav),
and the README stays a short front door whose links lead somewhere."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from conftest import REPO
from pydantic import BaseModel

from diversynth.config import RunConfig
from diversynth.config.reference import main, render

PAGE = REPO / "docs" / "configuration.md"
README = REPO / "README.md"
README_MAX_BYTES = 12_000
YAML_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.M | re.S)


def _sections(annotation: Any) -> Iterator[tuple[type[BaseModel], bool]]:
    """The config sections a field holds: (section, whether as the items of a list)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, False
        return
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        yield from _sections(get_args(annotation)[0])
    elif origin in (typing.Union, types.UnionType):
        for arg in get_args(annotation):
            yield from _sections(arg)
    elif origin is list:
        for arg in get_args(annotation):
            yield from ((section, True) for section, _ in _sections(arg))


def _schema(model: type[BaseModel] = RunConfig) -> dict[str, tuple[type[BaseModel], bool] | None]:
    """Every key of `model` (not dotted): its section, if it holds one."""
    return {name: next(_sections(field.annotation), None)
            for name, field in model.model_fields.items()}  # fmt: skip


def _dotted_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> Iterator[str]:
    """Every dotted key of the schema (`evaluate.sets[].name` for the items of a list)."""
    for name, section in _schema(model).items():
        yield f"{prefix}{name}"
        if section:
            inner, as_list = section
            yield from _dotted_keys(inner, f"{prefix}{name}{'[]' if as_list else ''}.")


def _unknown_keys(data: dict[str, Any], model: type[BaseModel], prefix: str = "") -> list[str]:
    """The keys of a config snippet the schema does not have."""
    schema = _schema(model)
    unknown = []
    for key, value in data.items():
        if key not in schema:
            unknown.append(f"{prefix}{key}")
            continue
        section = schema[key]
        if section is None:
            continue
        inner, as_list = section
        items = value if as_list and isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, dict):
                unknown += _unknown_keys(item, inner, f"{prefix}{key}.")
    return unknown


def test_the_configuration_page_is_what_the_schema_makes_now(tmp_path: Path) -> None:
    assert PAGE.read_text(encoding="utf-8") == render(), (
        "docs/configuration.md is stale: run .venv/bin/python scripts/config_reference.py"
    )
    stale = tmp_path / "configuration.md"
    stale.write_text(render().replace("## `train`", "## `training`"), encoding="utf-8")
    assert main(["--check", "--out", str(stale)]) == 1
    assert main(["--check", "--out", str(PAGE)]) == 0


def test_every_config_key_is_in_the_reference() -> None:
    page = PAGE.read_text(encoding="utf-8")
    keys = list(_dotted_keys())
    assert len(keys) > 150
    assert {"classes.disambiguate.mode", "evaluate.sets[].root", "train.augment.scale"} <= set(keys)
    missing = [key for key in keys if f"`{key}`" not in page]
    assert not missing, f"docs/configuration.md lacks {missing}"


def test_config_snippets_use_only_keys_the_schema_has() -> None:
    """A YAML block of the README or docs/ whose top-level keys are all config sections is
    a config (or a part of one): each of its keys must be one the schema takes."""
    top = set(RunConfig.model_fields)
    checked, unknown = 0, []
    for path in [README, *sorted((REPO / "docs").glob("*.md"))]:
        for block in YAML_BLOCK.findall(path.read_text(encoding="utf-8")):
            data = yaml.safe_load(block)
            if not isinstance(data, dict) or not set(data) <= top:
                continue  # a sweep file, a class list, a cluster spec
            checked += 1
            unknown += [f"{path.name}: {key}" for key in _unknown_keys(data, RunConfig)]
    assert checked >= 10
    assert not unknown, f"keys the config schema does not take: {unknown}"


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """mkdocs and mkdocs-material come with the dev extra (scripts/setup.sh installs it)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
               str(REPO / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "WARNING" not in output, output
    assert (tmp_path / "site" / "configuration" / "index.html").is_file()


def test_every_page_of_docs_is_in_the_nav() -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))

    def pages(items: Any) -> Iterator[str]:
        for item in items if isinstance(items, list) else [items]:
            if isinstance(item, dict):
                for value in item.values():
                    yield from pages(value)
            else:
                yield item

    listed = list(pages(config["nav"]))
    assert len(listed) == len(set(listed))
    assert sorted(listed) == sorted(p.name for p in (REPO / "docs").glob("*.md"))


def test_the_readme_is_a_short_front_door_whose_links_lead_somewhere() -> None:
    text = README.read_text(encoding="utf-8")
    size = len(text.encode("utf-8"))
    assert size < README_MAX_BYTES, f"README.md is {size:,} bytes: move the detail to docs/"
    for command in ("bash scripts/setup.sh", ".venv/bin/python -m pytest -q",
                    ".venv/bin/diversynth run configs/offline.yaml --out runs/demo"):  # fmt: skip
        assert command in text
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert any(t.startswith("docs/") for t in targets)
    broken = [t for t in targets if "://" not in t and not (REPO / t).exists()]
    assert not broken, f"README.md links to files that do not exist: {broken}"


def test_the_configs_the_manual_names_are_the_ones_there_are() -> None:
    text = README.read_text(encoding="utf-8") + "".join(
        p.read_text(encoding="utf-8") for p in sorted((REPO / "docs").glob("*.md"))
    )
    named = set(re.findall(r"\bconfigs/([\w.-]+\.yaml)\b", text))
    there = {p.name for p in (REPO / "configs").glob("*.yaml")}
    assert named - there == set(), "the manual names configs that do not exist"
    assert there - named == set(), "configs the manual never names"

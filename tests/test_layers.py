"""The package's structure, drawn from its own imports with `ast` (every import counts: at
the top, inside a function, or under TYPE_CHECKING).

Layers, from the bottom: the services every stage may use (config, errors, data, run,
models, llm); the stage folders, each on its own; the pipeline, the commands and the
offline kits on top. A stage talks to another only through the run directory.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import diversynth

ROOT = Path(diversynth.__file__).parent
SERVICES = ("config", "errors", "data", "run", "models", "llm")
STAGE_FOLDERS = sorted(p.name for p in (ROOT / "stages").iterdir() if (p / "__init__.py").is_file())


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports_in(source: str, package: str) -> Iterator[tuple[str, str | None, int]]:
    """(module, imported name or None, line) for each diversynth import in `source`, a
    module of `package`."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "diversynth":
                    yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            if base.split(".")[0] == "diversynth":
                for alias in node.names:
                    yield base, alias.name, node.lineno


def _imports(name: str) -> Iterator[tuple[str, str | None, int]]:
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return _imports_in(path.read_text(), package)


def _targets(found: Iterator[tuple[str, str | None, int]]) -> set[str]:
    """The modules imported (a name imported from a package that is itself a module
    counts as an arrow to that module)."""
    targets = set()
    for module, imported, _ in found:
        sub = f"{module}.{imported}"
        targets.add(sub if sub in MODULES else module)
    return targets


def _arrows() -> dict[str, set[str]]:
    """Each module's imports of other diversynth modules."""
    return {name: _targets(_imports(name)) - {name} for name in MODULES}


def _floor(module: str) -> str:
    """The entry a module lies in: 'stages.train' for the train stage's modules,
    'stages.declaration', else the top-level entry ('run', 'pipeline')."""
    parts = module.split(".")[1:]
    if parts[:1] == ["stages"] and len(parts) > 1:
        return f"stages.{parts[1]}"
    return parts[0] if parts else "diversynth"


def _against_layers(arrows: dict[str, set[str]]) -> list[str]:
    """Arrows from a stage to a sibling stage or upward, and from a service upward."""
    below = {*SERVICES, "stages.declaration", "diversynth"}
    wrong = []
    for module, targets in arrows.items():
        floor = _floor(module)
        for target in sorted(targets):
            to = _floor(target)
            if floor.startswith("stages.") and floor != "stages.declaration":
                if to != floor and to not in below:
                    wrong.append(f"{module} -> {target}")
            elif floor in (*SERVICES, "stages.declaration") and to not in below:
                wrong.append(f"{module} -> {target} (reaching up)")
    return wrong


def test_a_stage_imports_only_itself_the_declaration_and_the_services_below() -> None:
    wrong = _against_layers(_arrows())
    assert not wrong, "arrows against the layers:\n" + "\n".join(wrong)


def test_the_drawing_sees_lazy_relative_and_upward_imports() -> None:
    """A stage importing a sibling inside a function, or a service reaching up to the
    pipeline, is drawn and refused; the stage's own modules and the services are not."""
    source = (
        "from diversynth.run.rundir import RunDir\n"
        "from . import sampling\n"
        "def f():\n"
        "    from ..generate.stage import run_generate\n"
        "    import diversynth.commands.plan\n"
    )
    found = _targets(_imports_in(source, "diversynth.stages.train"))
    assert found == {"diversynth.run.rundir", "diversynth.stages.train.sampling",
                     "diversynth.stages.generate.stage", "diversynth.commands.plan"}  # fmt: skip
    wrong = _against_layers({"diversynth.stages.train.loop": found,
                             "diversynth.run.rundir": {"diversynth.pipeline"}})  # fmt: skip
    assert wrong == [
        "diversynth.stages.train.loop -> diversynth.commands.plan",
        "diversynth.stages.train.loop -> diversynth.stages.generate.stage",
        "diversynth.run.rundir -> diversynth.pipeline (reaching up)",
    ]


def test_the_modules_import_one_another_without_a_cycle() -> None:
    arrows = _arrows()
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        order[node] = low[node] = len(order)
        stack.append(node)
        for target in arrows.get(node, ()):
            if target not in order:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], order[target])
        if low[node] == order[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(arrows):
        if node not in order:
            visit(node)
    assert not cycles, f"modules that import one another: {cycles}"


def _unresolved(found: Iterator[tuple[str, str | None, int]], where: str) -> Iterator[str]:
    for module, imported, line in found:
        try:
            loaded = importlib.import_module(module)
        except ImportError as exc:
            yield f"{where}:{line}: {module} ({exc})"
            continue
        if imported and not hasattr(loaded, imported) and f"{module}.{imported}" not in MODULES:
            yield f"{where}:{line}: {module} has no {imported}"


def test_every_import_of_a_diversynth_name_resolves() -> None:
    """Lazy imports too (inside hooks and functions), which nothing else runs until the
    code path does: a moved function leaves no import behind that would fail there."""
    missing = []
    for name in MODULES:
        if not name.endswith("_llamacpp_child"):
            where = str(MODULES[name].relative_to(ROOT.parent))
            missing += _unresolved(_imports(name), where)
    assert not missing, "\n".join(missing)


def test_the_tests_and_benchmarks_import_only_what_the_package_has() -> None:
    """A name moved or no longer re-exported fails here, not when a slow test or a GPU
    benchmark first imports it."""
    repo = ROOT.parents[1]
    missing = []
    for path in sorted([*(repo / "tests").glob("*.py"), *(repo / "benchmarks").rglob("*.py"),
                        *(repo / "scripts").glob("*.py")]):  # fmt: skip
        found = _imports_in(path.read_text(), "")
        missing += _unresolved(found, str(path.relative_to(repo)))
    assert not missing, "\n".join(missing)


def test_the_pipeline_runs_every_stage_folder_and_each_declares_itself() -> None:
    from diversynth import pipeline

    assert sorted(stage.name for stage in pipeline.STAGES) == STAGE_FOLDERS
    for stage in pipeline.STAGES:
        package = importlib.import_module(f"diversynth.stages.{stage.name}")
        assert package.STAGE is stage
        hooks = [stage.run, stage.complete, stage.digest, stage.expected_sha, stage.discard]
        assert all(hook is None or callable(hook) for hook in hooks), stage.name
        # a stage reads only stages that run before it
        before = pipeline.STAGE_NAMES[: pipeline.STAGE_NAMES.index(stage.name)]
        assert set(stage.needs) <= set(before), stage.name


@pytest.mark.parametrize("entry", sorted(p.name for p in ROOT.iterdir()))
def test_the_ground_floor_holds_only_its_kinds(entry: str) -> None:
    kinds = {"commands", "config", "data", "errors.py", "llm", "models", "pipeline.py", "run",
             "stages", "testing", "__init__.py", "__main__.py", "py.typed",
             "__pycache__"}  # fmt: skip
    assert entry in kinds, f"{entry}: put it in the folder of its kind ({sorted(kinds)})"

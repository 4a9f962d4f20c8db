"""The library's shape: every module imports on its own, imports point one way (no
circle, each layer only below itself), no module is over 600 lines, and the qubesd
extension loads only the isolation part of the engine."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from repo_paths import ROOT

LIBRARY = ROOT / "_utils" / "reliant_lib"
PACKAGE = LIBRARY / "reliant"
EXTENSION = ROOT / "salt/reliant/files/isolation/extension/reliant_isolation/__init__.py"
MAX_LINES = 600
#: Layers from the bottom up: a module imports modules of its own layer or below.
LAYERS = (
    ("reliant.vocab", "reliant.platform", "reliant.config", "reliant.qubesd_schema",
     "reliant.qubesd_load"),
    ("reliant.store", "reliant.chunks", "reliant.snapshot", "reliant.volatile."),
    ("reliant.shards.",),
    ("reliant.isolation.",),
    ("reliant.operations", "reliant.declare", "reliant.audit", "reliant.adopt",
     "reliant.adopt_plan", "reliant.menus"),
    ("reliant.commands", "reliant.cli"),
)
#: What the qubesd extension may load (qubesd runs it: the rest of the engine stays out).
EXTENSION_MAY_LOAD = {"reliant", "reliant.vocab", "reliant.platform", "reliant.store",
                      "reliant.shards",
                      "reliant.shards.records", "reliant.shards.confine", "reliant.isolation",
                      "reliant.isolation.guard", "reliant.isolation.policy"}


def module_name(path: Path) -> str:
    parts = path.relative_to(LIBRARY).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path) -> set[str]:
    """The library modules `path` imports (a package's own modules, not its parents)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in MODULES else node.module)
    return {name for name in found if name in MODULES}


GRAPH = {name: imported(path) for name, path in MODULES.items()}


def layer(name: str) -> int:
    for index, members in enumerate(LAYERS):
        if any(name == m or (m.endswith(".") and name.startswith(m)) for m in members):
            return index
    raise AssertionError(f"{name}: in no layer of {LAYERS}")


def closure(names: set[str]) -> set[str]:
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(GRAPH.get(name, ()))
            todo.extend(".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1))
    return seen


def test_the_library_directory_is_no_package():
    """Salt's utils loader runs packages it finds in `_utils/`: the library stays
    invisible to it (HACKING.md)."""
    assert not (LIBRARY / "__init__.py").exists()
    assert all((path / "__init__.py").exists() for path in PACKAGE.rglob("*")
               if path.is_dir() and path.name != "__pycache__")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_imports_in_a_fresh_interpreter(name):
    result = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=LIBRARY,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_at_most_600_lines(name):
    assert len(MODULES[name].read_text().splitlines()) <= MAX_LINES


def test_imports_form_no_circle():
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join((*path, name))
        if name not in done:
            for target in sorted(GRAPH[name]):
                visit(target, (*path, name))
            done.add(name)

    for name in sorted(GRAPH):
        visit(name, ())


def test_imports_point_down_the_layers():
    upward = [f"{name} -> {target}" for name, targets in GRAPH.items() for target in targets
              if layer(target) > layer(name)]
    assert upward == []


def test_the_qubesd_extension_loads_only_the_isolation_part():
    loaded = closure({name for name in imported(EXTENSION)})
    assert loaded and loaded <= EXTENSION_MAY_LOAD, sorted(loaded - EXTENSION_MAY_LOAD)


def test_a_circle_would_be_found(monkeypatch):
    """The check above can fail: a module importing one that imports it back."""
    monkeypatch.setitem(GRAPH, "reliant.vocab", {"reliant.shards.records"})
    with pytest.raises(AssertionError, match=re.escape("reliant.vocab -> reliant.shards.records")):
        test_imports_form_no_circle()


def test_no_module_imports_a_private_name_of_another():
    """What modules share is public in the module that owns it."""
    private = [f"{name}: {node.module}.{alias.name}"
               for name, path in MODULES.items()
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.ImportFrom) and node.module
               and node.module.startswith("reliant")
               for alias in node.names if alias.name.startswith("_")]
    assert private == []

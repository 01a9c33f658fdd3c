"""The package's import graph: no cycles, and no module importing a layer above its own.

The layer order is the one docs/DESIGN.md states (its ``layers`` block); the test reads it from
there, so the document and the code cannot drift apart. Every import counts, including those
inside functions and under ``TYPE_CHECKING``: a deferred import is still a dependency.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "adapt"
DESIGN = ROOT / "docs" / "DESIGN.md"


def stated_layers() -> list[tuple[str, list[str]]]:
    """``[(layer, [module patterns])]`` bottom-up, from DESIGN.md's ```layers block."""
    match = re.search(r"```layers\n(.*?)```", DESIGN.read_text(encoding="utf-8"), re.S)
    assert match, "docs/DESIGN.md states no ```layers block"
    layers = []
    for line in match.group(1).splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, patterns = line.partition(":")
        layers.append((name.strip(), [p.strip() for p in patterns.split(",") if p.strip()]))
    return layers


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """adapt modules ``path`` imports (``from adapt.x import y`` counts ``adapt.x.y`` if a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("adapt"):
                found.add(target)
    return found


def layer_of(module: str, layers: list[tuple[str, list[str]]]) -> int:
    for index, (_, patterns) in enumerate(layers):
        if any(module == p or fnmatch.fnmatchcase(module, p) for p in patterns):
            return index
    raise AssertionError(f"{module} is in no layer of docs/DESIGN.md: add it to the layers block")


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, name, set(known)) for name, path in known.items()}


def test_every_module_is_in_a_stated_layer():
    layers = stated_layers()
    for module in modules():
        layer_of(module, layers)


def test_no_module_imports_a_layer_above_its_own():
    layers = stated_layers()
    upward = []
    for module, targets in graph().items():
        mine = layer_of(module, layers)
        for target in sorted(targets):
            theirs = layer_of(target, layers)
            if theirs > mine:
                upward.append(f"{module} ({layers[mine][0]}) imports {target} ({layers[theirs][0]})")
    assert not upward, "imports against the layer order of docs/DESIGN.md:\n" + "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_the_checker_sees_function_level_and_upward_imports(tmp_path):
    """The test itself must be able to fail: a planted upward import inside a function is caught."""
    planted = tmp_path / "adapt" / "model" / "planted.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("def f():\n    from adapt.runs.job import run_job\n    return run_job\n")
    found = imports(planted, "adapt.model.planted", {"adapt.runs.job", "adapt.runs", "adapt.model.planted"})
    assert found == {"adapt.runs.job"}
    layers = stated_layers()
    assert layer_of("adapt.runs.job", layers) > layer_of("adapt.model.planted", layers)

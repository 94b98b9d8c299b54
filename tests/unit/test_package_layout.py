"""The package and the benchmarks read top-down: small modules, thin classes (the addon class above
all), no import cycles between modules (imports made only for type checking count too), and in
bench/ no long function either."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import REPO

PACKAGE = REPO / "addon" / "backorigin"
BENCH = REPO / "bench"
TREES = {"addon": PACKAGE, "bench": BENCH}
MAX_MODULE_LINES = 450
MAX_ADDON_CLASS_LINES = 250
MAX_BENCH_FUNCTION_LINES = 80


def modules(package: Path) -> dict[str, Path]:
    found = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The tree's modules that `path` imports (`from backorigin.x import y` may name module x.y)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in known}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), and modules importing themselves."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def definitions(package: Path, kind: type[ast.AST] | tuple[type[ast.AST], ...]) -> dict[str, int]:
    """Lines of every definition of `kind` in the tree, by module:name (nested ones too)."""
    found = {}
    for name, path in modules(package).items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and isinstance(node, kind):
                found[f"{name}:{node.name}"] = (node.end_lineno or node.lineno) - node.lineno + 1
    return found


@pytest.mark.parametrize("tree", TREES)
def test_no_import_cycles(tree: str):
    known = modules(TREES[tree])
    graph = {name: imports(path, set(known)) - {name.rsplit(".", 1)[0] if path.name != "__init__.py" else ""}
             for name, path in known.items()}
    assert cycles(graph) == []


@pytest.mark.parametrize("tree", TREES)
def test_no_module_is_long(tree: str):
    long = {name: n for name, path in modules(TREES[tree]).items() if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_the_addon_class_is_thin():
    tree = ast.parse((PACKAGE / "addon.py").read_text())
    (addon,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "BackOrigin"]
    assert addon.end_lineno is not None and addon.end_lineno - addon.lineno + 1 < MAX_ADDON_CLASS_LINES


def test_no_bench_class_or_function_is_long():
    classes = {name: n for name, n in definitions(BENCH, ast.ClassDef).items() if n > MAX_ADDON_CLASS_LINES}
    functions = {name: n for name, n in definitions(BENCH, (ast.FunctionDef, ast.AsyncFunctionDef)).items()
                 if n > MAX_BENCH_FUNCTION_LINES}
    assert (classes, functions) == ({}, {})


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}, "b": set()}) == [["a"]]

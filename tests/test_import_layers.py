"""The project's imports form no cycle and point one way: benchmarks -> transfer -> mae_core.

Read from the source with `ast` (module-level and function-level imports alike, relative ones resolved),
so a lazy import inside a function that points back up is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mae_core", "transfer", "benchmarks")
LAYER = {"mae_core": 0, "transfer": 1, "benchmarks": 2}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that `name` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` the module itself
            candidates = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for c in candidates:
            while c and c not in modules:  # `import a.b.c` of a name inside a module: its module
                c = c.rpartition(".")[0]
            if c and c != name:
                targets.add(c)
    return targets


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "benchmarks.cli_args" in graph["benchmarks.cli"]  # `from .cli_args import ...` at module level
    assert "benchmarks.pipeline" in graph["benchmarks.cli"]  # `from .pipeline import run_pipeline` in a function
    assert "transfer.segmentation.resume" in graph["transfer.segmentation.engine"]  # `from . import resume`


def test_no_import_cycle_between_project_modules():
    graph = import_graph()
    assert cycles(graph) == []


def test_imports_point_down_the_layers():
    up = [f"{a} -> {b}" for a, bs in import_graph().items() for b in bs
          if LAYER[b.split(".")[0]] > LAYER[a.split(".")[0]]]
    assert up == []


def test_no_module_imports_another_ones_private_names():
    """Shared helpers live in a shared module under public names (e.g. benchmarks/cli_common.py)."""
    modules, private = _modules(), []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] in PACKAGES):
                private += [f"{name}: {'.' * node.level}{node.module or ''} import {a.name}" for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
    assert private == []


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_cycle_finder(graph, expected):
    assert cycles(graph) == expected

"""The architecture as a test: no module imports in a cycle, and imports point down the layers.

Imports inside functions count (they are how a cycle gets hidden). Layers, top to bottom:
front (CLI, demo) → results (store, sweep, report) → pipeline (recipe, stage loop) → methods (the
axes) → graph (channel engine) and the libraries (models, data, train, eval, sparse) → core.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import secateurs

ROOT = Path(secateurs.__file__).parent
PACKAGE = "secateurs"


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = (PACKAGE, *path.relative_to(ROOT).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """The package's modules `module` imports, anywhere in its body."""
    path = MODULES[module]
    base = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            prefix = node.module or ""
            if node.level:
                parts = base.split(".")[: len(base.split(".")) - node.level + 1]
                prefix = ".".join([*parts, *([prefix] if prefix else [])])
            names = [prefix, *(f"{prefix}.{a.name}" for a in node.names)]
        else:
            continue
        for name in names:
            target = _resolve(name)
            if target and target != module and not module.startswith(target + "."):
                found.add(target)
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_in_a_cycle() -> None:
    assert _cycles() == []


LAYERS = {  # a module may import its own layer and the layers with a higher number
    "front": 0,
    "results": 1,
    "pipeline": 2,
    "llm": 3,
    "structured": 3,
    "methods": 4,
    "graph": 5,
    "export": 5,
    "sparse": 5,
    "eval": 5,
    "train": 5,
    "models": 6,
    "data": 6,
    "core": 7,
}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) is not None))
def test_imports_point_down_the_layers(module: str) -> None:
    own = _layer(module)
    upward = sorted(t for t in GRAPH[module] if (_layer(t) is not None and _layer(t) < own))  # type: ignore[operator]
    assert upward == [], f"{module} imports from a layer above it"

"""The import graph of ``taskguard``: no cycles, and each floor imports only floors below.

Every import is counted, at module level or inside a function (an import inside a
function that closes a cycle is still a cycle; it only hides it from Python).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "taskguard"

#: Floors, bottom first. A module may import its own floor and the floors below it.
FLOORS: list[tuple[str, ...]] = [
    ("errors", "units", "keys", "_escape", "clock", "urls", "_validate", "signals", "_instrument"),
    ("backend",),
    ("heartbeat", "guards", "sinks"),
    ("cache", "drain", "status", "events"),
    ("client", "aio", "_limits"),
    ("celery",),
    ("cli", "demo", "testing", "integrations", "sentry", "contrib", "pytest"),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> Iterator[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target
            # `from taskguard.backend import memory` imports a module too.
            yield from (f"{target}.{alias.name}" for alias in node.names)


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        graph[module] = {
            target
            for target in _imports(path, module)
            if target in paths and target != module and not module.startswith(f"{target}.")
        }
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _floor(module: str) -> int | None:
    top = module.split(".")[1] if "." in module else ""
    for level, names in enumerate(FLOORS):
        if top in names:
            return level
    return None


def test_there_is_no_import_cycle() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_each_floor_imports_only_floors_below_it() -> None:
    upward = []
    for module, targets in _graph().items():
        level = _floor(module)
        if level is None:
            continue
        for target in targets:
            other = _floor(target)
            if other is not None and other > level:
                upward.append(f"{module} -> {target}")
    assert sorted(upward) == []


@pytest.mark.parametrize("module", sorted(_graph()))
def test_every_module_has_a_floor(module: str) -> None:
    if module == "taskguard":
        return  # the package's __init__ re-exports from every floor
    assert _floor(module) is not None, f"add {module.split('.')[1]!r} to FLOORS"

"""No import cycle among the core modules (the ``streamkit`` package, connectors and processors aside).

Every import counts, including those under ``if TYPE_CHECKING:`` and inside functions: a cycle hidden that
way still means two modules that cannot be understood (or moved) one without the other. The graph is read
from the source with ``ast``, so nothing is imported and the check costs milliseconds.
"""

from __future__ import annotations

import ast
from collections.abc import Collection, Mapping
from pathlib import Path

import streamkit

CORE = Path(streamkit.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(tree: ast.Module, module: str, is_package: bool, modules: Collection[str]) -> set[str]:
    """The names of ``modules`` that ``tree`` imports.

    ``from a.b import c`` imports the module ``a.b.c`` when there is one, else (a name defined in) ``a.b``.
    A package's own ``__init__`` that a submodule passes through on ``from . import sibling`` is not counted:
    Python imports every parent package first anyway, so that is no dependency of the submodule's making.
    """
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # Relative: strip `level` components (one fewer when the importer is a package's __init__).
                base_parts = module.split(".")
                drop = node.level - 1 if is_package else node.level
                base = ".".join(base_parts[: len(base_parts) - drop])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                names.add(submodule if submodule in modules else target)
    return {name for name in names if name in modules}


def core_import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in CORE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        imported = imported_names(tree, name, path.name == "__init__.py", paths.keys())
        graph[name] = imported - {name}
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
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


def test_the_detector_finds_a_cycle_hidden_under_type_checking() -> None:
    batch = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from streamkit.acks import AckTicket\n")
    acks = ast.parse("def f():\n    from . import batch\n")
    modules = {"streamkit", "streamkit.acks", "streamkit.batch", "streamkit.leaf"}
    graph = {
        "streamkit.batch": imported_names(batch, "streamkit.batch", False, modules),
        "streamkit.acks": imported_names(acks, "streamkit.acks", False, modules),
        "streamkit.leaf": set(),
    }
    assert cycles(graph) == [["streamkit.acks", "streamkit.batch"]]


def test_the_graph_covers_the_core() -> None:
    graph = core_import_graph()
    assert {"streamkit.acks", "streamkit.batch", "streamkit.sink", "streamkit.deadletter"} <= graph.keys()
    assert "streamkit.partition" in graph["streamkit.acks"]
    assert "streamkit.sink" in graph["streamkit.deadletter"]


def test_no_import_cycle_among_core_modules() -> None:
    assert cycles(core_import_graph()) == []

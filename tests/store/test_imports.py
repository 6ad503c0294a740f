"""The import graph of ``outlast`` has no cycle.

Every import counts: at module level, inside functions (lazy imports) and under
``TYPE_CHECKING``. A cycle usually means a contract depends on one of its implementations
(see the layer map in :mod:`outlast.store.base`). A package's ``__init__`` importing its own
submodules is how packages are made and is not an edge back from those submodules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import outlast

ROOT = Path(outlast.__file__).parent


def module_names() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    names: dict[str, Path] = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of the package that *name* imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # ``from pkg import sub`` imports the submodule; ``from mod import x`` the module.
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {target for target in found if target in modules and target != name}


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of *graph* as a path that ends where it starts, or ``None``."""
    done: set[str] = set()

    def visit(node: str, path: list[str], on_path: set[str]) -> list[str] | None:
        for target in sorted(graph[node]):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target in done:
                continue
            cycle = visit(target, [*path, target], on_path | {target})
            if cycle is not None:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start, [start], {start})
            if cycle is not None:
                return cycle
    return None


def test_the_checker_sees_type_checking_and_lazy_imports() -> None:
    graph = import_graph()
    # Lazy: open_store imports a backend inside the function.
    assert "outlast.store.sqlite" in graph["outlast.store"]
    # Relative and submodule forms resolve to the module imported.
    assert "outlast.store.jobs_logic" in graph["outlast.store.sqlite"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_outlast() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])

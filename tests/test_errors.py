"""The error tree drawn in ``outlast/errors.py``'s docstring is complete and true: every public
exception class that outlast defines is drawn there, under its real parent."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import outlast
import outlast.errors


def outlast_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(outlast.__path__, "outlast."):
        if info.name.endswith("__main__"):
            continue  # runs the command line when imported
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__.startswith("outlast")
                and not name.startswith("_")
            ):
                found[value.__name__] = value
    return found


def drawn_tree() -> dict[str, str | None]:
    """Each class name in the docstring's tree, with the name drawn as its parent."""
    doc = outlast.errors.__doc__ or ""
    tree: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        # Tree lines: "    Root", "    ├── Child", "    │   └── Grandchild": a name's column
        # gives its depth (4 characters a level, after the block's 4-space indent).
        match = re.match(r"^    [ │├└─]*?([A-Z][A-Za-z]+)(?:\s|$)", line)
        if not match:
            continue
        name = match.group(1)
        depth = (match.start(1) - 4) // 4
        while stack and stack[-1][0] >= depth:
            stack.pop()
        tree[name] = stack[-1][1] if stack else None
        stack.append((depth, name))
    return tree


def test_every_exception_is_drawn_under_its_parent() -> None:
    tree = drawn_tree()
    assert tree.get("OutlastError", "missing") is None, "the tree's root is OutlastError"
    classes = outlast_exceptions()
    missing = sorted(set(classes) - set(tree))
    assert not missing, f"exception classes missing from errors.py's tree: {missing}"
    for name, parent in tree.items():
        assert name in classes, f"errors.py draws {name}, which outlast does not define"
        if parent is not None:
            assert classes[name].__bases__[0] is classes[parent], (
                f"{name} is drawn under {parent}, but its parent is "
                f"{classes[name].__bases__[0].__name__}"
            )


def test_every_exception_is_an_outlast_error() -> None:
    for name, cls in outlast_exceptions().items():
        assert issubclass(cls, outlast.errors.OutlastError), f"{name} is outside the tree"

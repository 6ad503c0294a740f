"""What the group-commit engines share: the groups a writer thread takes, and how the callers of
a committed group learn their results.

An engine's operations wait in a queue; a writer thread takes every operation waiting (up to a
bound) as one group and commits it with one transaction. ``None`` in the queue stops the thread,
after the operations queued before it.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator
from typing import Any, TypeVar

from outlast.store.notify import Notifier

T = TypeVar("T")
# An operation's caller, and what the operation returned or raised.
Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]


def groups(ops: queue.SimpleQueue[T | None], limit: int) -> Iterator[list[T]]:
    """Each group a writer runs: an operation, and those waiting behind it (*limit* in all)."""
    while True:
        item = ops.get()
        if item is None:
            return
        group = [item]
        while len(group) < limit:
            try:
                nxt = ops.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                yield group
                return
            group.append(nxt)
        yield group


def resolve(outcomes: list[Outcome], notifier: Notifier) -> None:
    """On the loop, after a commit: wake the readers of what each operation changed (its
    result's ``changed_names``), then resolve its caller."""
    for future, value, error in outcomes:
        if error is None:
            for name in getattr(value, "changed_names", ()):
                notifier.changed(name)
        if future.cancelled():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

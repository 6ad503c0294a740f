"""In-process wake-ups for live readers: one event per stream name, replaced on every change.

:meth:`Notifier.waiter` gives one waiter its own future instead, which it can give up on after
a deadline with a timer rather than a timeout context (many readers wait on every change).
"""

from __future__ import annotations

import asyncio


class Notifier:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._waiters: dict[str, set[asyncio.Future[bool]]] = {}

    def event(self, name: str) -> asyncio.Event:
        """The event the next change of *name* sets. Get it before checking the stream."""
        event = self._events.get(name)
        if event is None:
            event = self._events[name] = asyncio.Event()
        return event

    def waiter(self, name: str, timeout: float) -> asyncio.Future[bool]:
        """A future resolved with ``True`` at the next change of *name*, or with ``False``
        after *timeout* seconds. Get it before checking the stream; cancel it if not needed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        waiters = self._waiters.get(name)
        if waiters is None:
            waiters = self._waiters[name] = set()
        waiters.add(future)
        timer = loop.call_later(timeout, _expire, future)
        future.add_done_callback(lambda f: self._done(name, f, timer))
        return future

    def _done(self, name: str, future: asyncio.Future[bool], timer: asyncio.TimerHandle) -> None:
        timer.cancel()
        waiters = self._waiters.get(name)
        if waiters is not None:
            waiters.discard(future)
            if not waiters:
                del self._waiters[name]

    def changed(self, name: str) -> None:
        event = self._events.pop(name, None)
        if event is not None:
            event.set()
        waiters = self._waiters.pop(name, None)
        if waiters is not None:
            for future in waiters:
                if not future.done():
                    future.set_result(True)

    def changed_all(self) -> None:
        events, self._events = self._events, {}
        for event in events.values():
            event.set()
        waiters, self._waiters = self._waiters, {}
        for futures in waiters.values():
            for future in futures:
                if not future.done():
                    future.set_result(True)


def _expire(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)

"""In-process wake-ups for live readers: one event per stream name, replaced on every change."""

from __future__ import annotations

import asyncio


class Notifier:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def event(self, name: str) -> asyncio.Event:
        """The event the next change of *name* sets. Get it before checking the stream."""
        event = self._events.get(name)
        if event is None:
            event = self._events[name] = asyncio.Event()
        return event

    def changed(self, name: str) -> None:
        event = self._events.pop(name, None)
        if event is not None:
            event.set()

    def changed_all(self) -> None:
        events, self._events = self._events, {}
        for event in events.values():
            event.set()

"""Following a stream: read from a position, wait at the tail for more, and end when the stream
is closed or when the server stops its live readers.

Every reader of a stream goes through :class:`Follow`: the streams API's SSE mode, a job's native
SSE view, the OpenAI-compatible pass-through and the relay's look at what an earlier attempt
stored. Every wait for a stream to grow (long-polls included) goes through
:meth:`Readers.wait`. So one set of rules decides when to read, when to wait and when to stop:

- a read that did not reach the tail is followed by another read at once;
- a read that reached the tail is followed by a wait for the store to say the stream changed,
  never by another read (a read at the tail finds nothing and costs a store round trip);
- a wait that times out yields a keepalive tick (``None``), then reads again, so a wake-up the
  store missed costs at most one keepalive interval;
- a closed stream read to its end, an optional deadline, or the server's signal to stop readers
  ends the follow; :attr:`Follow.end` says which.

Stopping costs no task per reader: a wait runs in its reader's own task, and stopping the readers
cancels the tasks that are waiting at that moment; :meth:`Readers.wait` takes that cancellation
back and reports it as a timeout. Read errors are raised to the caller (an SSE response ends
cleanly on them, see :class:`outlast.api.sse_response.SSEResponse`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Literal

from outlast.store.base import ReadResult, Store

End = Literal["tail", "closed", "deadline", "stopped"]


class Readers:
    """The live readers of one store: their waits, all ended by one *stop* event."""

    def __init__(self, store: Store, stop: asyncio.Event, max_read_bytes: int) -> None:
        self.store = store
        self.stop = stop
        self.max_read_bytes = max_read_bytes
        self._stopper: asyncio.Future[Any] | None = None
        # Tasks waiting right now, and those of them that stopping the readers cancelled.
        self._waiting: set[asyncio.Task[Any]] = set()
        self._cancelled_by_stop: set[asyncio.Task[Any]] = set()

    @property
    def stopped(self) -> bool:
        return self.stop.is_set()

    def follow(
        self, name: str, position: int, keepalive: float, *, deadline: float | None = None
    ) -> Follow:
        """Follow *name* live from *position*, with a tick after *keepalive* quiet seconds and
        an end at *deadline* (``time.monotonic()``) if given."""
        return Follow(
            self.store,
            name,
            position,
            self.max_read_bytes,
            readers=self,
            keepalive=keepalive,
            deadline=deadline,
        )

    async def wait(self, name: str, position: int, timeout: float) -> bool:
        """Wait for data past *position* (or a close); ``False`` on timeout, and also, at once,
        when the readers are stopped. A failed wait is reported as a timeout: the caller reads
        next and meets the error there."""
        if self.stop.is_set():
            return False
        self._watch_stop()
        task = asyncio.current_task()
        assert task is not None
        self._waiting.add(task)
        try:
            return await self.store.wait(name, position, timeout)
        except asyncio.CancelledError:
            if task in self._cancelled_by_stop:
                self._cancelled_by_stop.discard(task)
                if task.uncancel() == 0:
                    return False  # only the stop cancelled us; the reader ends cleanly
            raise
        except Exception:
            return False
        finally:
            self._waiting.discard(task)
            self._cancelled_by_stop.discard(task)

    def _watch_stop(self) -> None:
        """One task for all readers (per event loop) that cancels their waits on the stop."""
        stopper = self._stopper
        if stopper is None or stopper.get_loop() is not asyncio.get_running_loop():
            stopper = self._stopper = asyncio.ensure_future(self.stop.wait())
            stopper.add_done_callback(self._stop_waiting)

    def _stop_waiting(self, _: object) -> None:
        for task in list(self._waiting):
            self._cancelled_by_stop.add(task)
            task.cancel()


@dataclass(slots=True, eq=False)
class Follow:
    """An async iterator over the reads of one stream from *position*.

    Each step is a :class:`ReadResult` (with units, or without: the first read, a read after a
    close or a keepalive) or ``None``, a keepalive tick after *keepalive* seconds without news.
    Without *readers* it is a catch-up: it ends at the tail (``end == "tail"``) and never waits.
    """

    store: Store
    name: str
    position: int
    max_bytes: int
    _: KW_ONLY
    readers: Readers | None = None
    keepalive: float = 0.0
    deadline: float | None = None
    end: End | None = field(default=None, init=False)
    _at_tail: bool = field(default=False, init=False)
    _started: bool = field(default=False, init=False)

    def __aiter__(self) -> Follow:
        return self

    async def __anext__(self) -> ReadResult | None:
        if self._at_tail:
            self._at_tail = False
            if not await self._wait():
                if self.end is not None:
                    raise StopAsyncIteration
                return None
        if self.end is not None:
            raise StopAsyncIteration
        if self._started and self.readers is not None and self.readers.stopped:
            # Readers are being ended (shutdown): a reader still behind stops too, at once. Its
            # client resumes from the last offset it got; reads served from memory never give
            # way to other tasks, so an aborted reader would otherwise read on into nowhere.
            self.end = "stopped"
            raise StopAsyncIteration
        self._started = True
        result = await self.store.read(self.name, self.position, self.max_bytes)
        self.position = result.next
        if self.position >= result.info.tail:
            if result.info.closed:
                self.end = "closed"
            elif self.readers is None:
                self.end = "tail"
            else:
                self._at_tail = True
        return result

    async def _wait(self) -> bool:
        """Wait at the tail: ``True`` when the stream changed; ``False`` with :attr:`end` set
        when the follow is over, or without it for a keepalive tick."""
        readers = self.readers
        assert readers is not None
        timeout = self.keepalive
        if self.deadline is not None:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                self.end = "deadline"
                return False
            timeout = min(remaining, timeout)
        changed = await readers.wait(self.name, self.position, timeout)
        if readers.stopped:
            self.end = "stopped"
            return False
        if not changed and self.deadline is not None and time.monotonic() >= self.deadline:
            self.end = "deadline"
        return changed

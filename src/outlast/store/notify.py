"""Wake-ups for live readers and idle claim loops: one event per name (a stream, a queue),
replaced on every change.

:meth:`Notifier.waiter` gives one waiter its own future instead, which it can give up on after
a deadline with a timer rather than a timeout context (many readers wait on every change).
:class:`Siblings` carries the changes to the other processes of ``serve --workers N`` on SQLite
(Redis carries them between processes itself, by pub/sub).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable

log = logging.getLogger("outlast.store")

# One datagram carries at most this many bytes of names; more names take several (a name
# longer than that goes alone, up to RECEIVE_MAX).
MAX_DATAGRAM = 32 * 1024
RECEIVE_MAX = 256 * 1024
RECEIVE_BUFFER = 1 << 20
# Names waiting for a sibling whose queue was full are sent again after this long; past
# BACKLOG_NAMES of them, one "everything changed" message stands for them all.
BACKLOG_RETRY = 0.002
BACKLOG_NAMES = 10_000
# Not a name (names hold no control characters): "anything may have changed".
EVERYTHING = "\x00"


class Notifier:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._waiters: dict[str, set[asyncio.Future[bool]]] = {}
        # Set in a process of `serve --workers N` on SQLite: commits are told to the siblings.
        self.siblings: Siblings | None = None

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
        """*name* changed in a commit of this process."""
        self.wake(name)
        if self.siblings is not None:
            self.siblings.note(name)

    def wake(self, name: str) -> None:
        """Wake this process's waiters on *name* (a change told by another process)."""
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


class Siblings:
    """Wake-ups shared by the processes of one ``serve --workers N`` on one SQLite file.

    Each process binds a Unix datagram socket ``<index>.sock`` in a directory the supervisor
    gives it. After its commits, a process sends the names they changed (streams, queues) to
    every sibling, at most one datagram per sibling per event-loop turn; a sibling forgets what
    it cached of those streams and wakes its readers and idle claim loops. Nothing polls: a
    process sleeps until a datagram arrives. A sibling that is not listening (starting, or
    being restarted) is skipped: it starts with nothing cached. When a sibling's receive queue
    is full, the names wait for it (retried shortly), and past :data:`BACKLOG_NAMES` they become
    one "everything changed" message. Readers also re-check the store on their own now and
    then, so a lost wake-up costs latency, never a missed write.
    """

    def __init__(self, directory: str, index: int, count: int) -> None:
        self.directory = directory
        self.index = index
        self.path = os.path.join(directory, f"{index}.sock")
        self.peers = [os.path.join(directory, f"{i}.sock") for i in range(count) if i != index]
        self._pending: set[str] = set()
        self._backlog: dict[str, set[str]] = {}
        self._scheduled = False
        self._sock: socket.socket | None = None
        self._buffer = bytearray(RECEIVE_MAX)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_names: Callable[[list[str] | None], None] | None = None

    def start(self, on_names: Callable[[list[str] | None], None]) -> None:
        """Listen for the siblings' changes: *on_names* gets the names, or ``None`` for
        "anything may have changed"."""
        self._loop = asyncio.get_running_loop()
        self._on_names = on_names
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left by this slot's previous process
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind(self.path)
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._receive)

    def note(self, name: str) -> None:
        """*name* changed in a commit of this process: tell the siblings this loop turn."""
        if self._sock is None:
            return
        self._pending.add(name)
        if not self._scheduled:
            self._scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        names, self._pending = self._pending, set()
        retry = False
        for peer in self.peers:
            backlog = self._backlog.pop(peer, None)
            if backlog is not None:
                backlog |= names
            unsent = self._send(peer, backlog if backlog is not None else names)
            if unsent:
                if len(unsent) > BACKLOG_NAMES:
                    unsent = {EVERYTHING}
                self._backlog[peer] = unsent
                retry = True
        if retry and not self._scheduled:
            self._scheduled = True
            assert self._loop is not None
            self._loop.call_later(BACKLOG_RETRY, self._flush)

    def _send(self, peer: str, names: set[str]) -> set[str]:
        """Send *names* to *peer*; what could not be sent yet (its queue is full)."""
        assert self._sock is not None
        if EVERYTHING in names:
            names = {EVERYTHING}
        left = sorted(names)
        while left:
            chunk: list[str] = []
            size = 0
            while left and (not chunk or size + len(left[-1]) + 1 <= MAX_DATAGRAM):
                name = left.pop()
                chunk.append(name)
                size += len(name.encode()) + 1
            try:
                self._sock.sendto("\n".join(chunk).encode(), peer)
            except BlockingIOError:
                return {*chunk, *left}
            except (FileNotFoundError, ConnectionRefusedError):
                return set()  # not listening (starting or restarting): it has nothing cached
            except OSError as exc:
                log.warning("wake-up for sibling %s not sent: %s", peer, exc)
                return set()
        return set()

    def _receive(self) -> None:
        assert self._sock is not None and self._on_names is not None
        names: list[str] = []
        everything = False
        while True:
            try:
                size = self._sock.recv_into(self._buffer)
            except (BlockingIOError, InterruptedError):
                break
            for name in self._buffer[:size].decode(errors="replace").split("\n"):
                if name == EVERYTHING:
                    everything = True
                else:
                    names.append(name)
        if everything:
            self._on_names(None)
        elif names:
            self._on_names(names)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(sock.fileno())
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _expire(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)

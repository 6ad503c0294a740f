"""The one way to follow a stream (:mod:`outlast.follow`), on a real store of every backend: what
it reads and when it waits, its keepalive ticks, and each way it ends. A store wrapper records
the calls the follower makes, so the rules are checked on the calls themselves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from outlast.follow import Follow, Readers
from outlast.store import Store, open_store
from outlast.store.base import AppendSpec, CreateSpec, ReadResult

pytestmark = pytest.mark.anyio

TEXT = "text/plain"
MAX_READ = 1 << 20
# Long enough never to pass during a test: a tick or an end seen earlier came from elsewhere.
NEVER = 60.0
GUARD = 10.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Recording:
    """The real store; ``calls`` lists each read and wait, ``waiting`` is set inside a wait."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.calls: list[str] = []
        self.waiting = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def read(self, name: str, position: int, max_bytes: int) -> ReadResult:
        self.calls.append("read")
        return await self._store.read(name, position, max_bytes)

    async def wait(self, name: str, position: int, timeout: float) -> bool:
        self.calls.append("wait")
        self.waiting.set()
        try:
            return await self._store.wait(name, position, timeout)
        finally:
            self.waiting.clear()


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[_Recording]:
    opened = await open_store(store_url)
    try:
        yield _Recording(opened)
    finally:
        await opened.close()


async def _stream(store: _Recording, name: str, data: bytes) -> None:
    await store.create_stream(name, CreateSpec(content_type=TEXT, units=[(data, 1)]))


async def _append(store: _Recording, name: str, data: bytes, *, close: bool = False) -> None:
    await store.append(name, AppendSpec(content_type=TEXT, unit=(data, 1), close=close))


def _data(result: ReadResult | None) -> bytes:
    assert result is not None
    return b"".join(unit.data for unit in result.units)


def _readers(store: _Recording) -> Readers:
    return Readers(cast(Store, store), asyncio.Event(), MAX_READ)


async def _next(follow: Follow) -> ReadResult | None:
    async with asyncio.timeout(GUARD):
        return await anext(follow)


async def _waiting_step(follow: Follow, store: _Recording) -> asyncio.Future[ReadResult | None]:
    """The follow's next step, started, once it waits in the store."""
    step = asyncio.ensure_future(_next(follow))
    async with asyncio.timeout(GUARD):
        await store.waiting.wait()
    return step


async def _ended(follow: Follow) -> None:
    with pytest.raises(StopAsyncIteration):
        await _next(follow)


async def test_a_read_that_reached_the_tail_is_followed_by_a_wait_not_a_read(
    store: _Recording,
) -> None:
    await _stream(store, "tail", b"a")
    follow = _readers(store).follow("tail", 0, NEVER)
    assert _data(await _next(follow)) == b"a"
    step = await _waiting_step(follow, store)
    await _append(store, "tail", b"b")
    assert _data(await step) == b"b"
    assert store.calls == ["read", "wait", "read"]
    assert follow.end is None


async def test_a_quiet_wait_yields_a_keepalive_tick_then_reads_again(store: _Recording) -> None:
    await _stream(store, "quiet", b"a")
    follow = _readers(store).follow("quiet", 0, 0.01)
    assert _data(await _next(follow)) == b"a"
    assert await _next(follow) is None
    result = await _next(follow)
    assert result is not None and result.units == []
    assert store.calls == ["read", "wait", "read"]


async def test_a_closed_stream_ends_the_follow_after_its_last_data(store: _Recording) -> None:
    await _stream(store, "closing", b"a")
    follow = _readers(store).follow("closing", 0, NEVER)
    assert _data(await _next(follow)) == b"a"
    step = await _waiting_step(follow, store)
    await _append(store, "closing", b"z", close=True)
    assert _data(await step) == b"z"
    await _ended(follow)
    assert follow.end == "closed"
    assert store.calls == ["read", "wait", "read"]


async def test_stopping_the_readers_ends_a_waiting_follow_at_once(store: _Recording) -> None:
    await _stream(store, "stopped", b"a")
    readers = _readers(store)
    follow = readers.follow("stopped", 0, NEVER)
    await _next(follow)
    step = await _waiting_step(follow, store)
    readers.stop.set()
    with pytest.raises(StopAsyncIteration):
        await step  # the stop's cancellation was taken back: the reader's task goes on
    assert follow.end == "stopped"
    # A wait after the stop returns at once, without asking the store.
    assert await readers.wait("stopped", 1, NEVER) is False
    assert store.calls == ["read", "wait"]


async def test_a_deadline_ends_the_follow(store: _Recording) -> None:
    await _stream(store, "deadline", b"a")
    follow = _readers(store).follow("deadline", 0, NEVER, deadline=time.monotonic() + 0.01)
    await _next(follow)
    await _ended(follow)
    assert follow.end == "deadline"


async def test_without_readers_a_follow_catches_up_to_the_tail_and_ends(
    store: _Recording,
) -> None:
    await _stream(store, "catch-up", b"a")
    for part in (b"b", b"c"):
        await _append(store, "catch-up", part)
    follow = Follow(cast(Store, store), "catch-up", 0, 1)  # one unit per read
    assert [_data(result) async for result in follow] == [b"a", b"b", b"c"]
    assert follow.end == "tail"
    assert store.calls == ["read", "read", "read"]

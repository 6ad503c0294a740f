"""Live readers of the Redis store when this node's pool of connections is busy (they fall
behind and catch up) and when Redis is gone (they end with the outage, see docs/redis.md).

Each test runs two stores on one real ``redis-server``: a writer and a reader node, so that the
readers go to Redis for what they read (a node serves its own commits from memory). The reader
node's pool is made small and its connections are held, as readers under overload hold them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio.connection import AbstractConnection, BlockingConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from outlast.errors import StoreUnavailable
from outlast.follow import Readers
from outlast.store import open_store
from outlast.store import redis as redis_store
from outlast.store.base import AppendSpec, CreateSpec
from outlast.store.redis import RedisStore
from tests.conftest import RedisProcess

pytestmark = pytest.mark.anyio

TEXT = "text/plain"
READERS = 6
# Connections of the reader node's pool: the subscription to other nodes' changes holds one,
# the test holds the others.
POOL = 3
POOL_WAIT = 0.05  # seconds a read waits for a pooled connection at a time
GUARD = 30.0
NEVER = 600.0  # a keepalive that never passes during a test


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _Pool:
    """The reader node's pool: its free connections taken by the test, each connection it gave
    counted (``given``: one a call to Redis), and each task that was refused a connection
    recorded (``all_refused`` is set once *readers* tasks were)."""

    def __init__(self, store: RedisStore, readers: int, monkeypatch: pytest.MonkeyPatch) -> None:
        pool = store.client.connection_pool
        assert isinstance(pool, BlockingConnectionPool)
        pool.timeout = POOL_WAIT
        self.pool = pool
        self.held: list[AbstractConnection] = []
        self.refused: set[asyncio.Task[Any]] = set()
        self.all_refused = asyncio.Event()
        self.given = 0
        get = pool.get_connection

        async def counted(*args: Any, **kwargs: Any) -> AbstractConnection:
            try:
                connection = await get(*args, **kwargs)
            except RedisConnectionError:
                task = asyncio.current_task()
                assert task is not None
                self.refused.add(task)
                if len(self.refused) >= readers:
                    self.all_refused.set()
                raise
            self.given += 1
            return connection

        self._get = get
        monkeypatch.setattr(pool, "get_connection", counted)

    async def hold_all(self) -> None:
        while self.pool.can_get_connection():
            self.held.append(await self._get())

    async def release(self) -> None:
        for connection in self.held:
            await self.pool.release(connection)
        self.held.clear()


@pytest.fixture
async def nodes(
    redis_factory: Callable[[], RedisProcess], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[RedisProcess, RedisStore, RedisStore]]:
    server = redis_factory()
    monkeypatch.setattr(redis_store, "MAX_CONNECTIONS", POOL)
    writer = await open_store(server.url)
    reader = await open_store(server.url)
    assert isinstance(writer, RedisStore) and isinstance(reader, RedisStore)
    try:
        yield server, writer, reader
    finally:
        await reader.close()
        await writer.close()


async def _follow(readers: Readers, name: str) -> list[bytes]:
    follow = readers.follow(name, 0, NEVER)
    got: list[bytes] = []
    async for result in follow:
        if result is not None:
            got += [unit.data for unit in result.units]
    assert follow.end == "closed"
    return got


async def _append(store: RedisStore, name: str, data: bytes, *, close: bool = False) -> None:
    await store.append(name, AppendSpec(content_type=TEXT, unit=(data, 1), close=close))


async def _stop(tasks: list[asyncio.Task[Any]], pool: _Pool) -> None:
    """End the readers still running, then give the held connections back."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await pool.release()


async def test_live_readers_wait_for_a_busy_pool_and_miss_nothing(
    nodes: tuple[RedisProcess, RedisStore, RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """More live readers than pooled connections, none free: each read is refused a
    connection (the pool's wait runs out) and waits again; once connections are free, every
    reader gets every event and none ends with an error."""
    _, writer, reader = nodes
    pool = _Pool(reader, READERS, monkeypatch)
    await writer.create_stream("s", CreateSpec(content_type=TEXT))
    readers = Readers(reader, asyncio.Event(), 1 << 20)
    await pool.hold_all()
    tasks = [asyncio.create_task(_follow(readers, "s")) for _ in range(READERS)]
    try:
        sent = [f"event {i};".encode() for i in range(10)]
        for data in sent[:5]:
            await _append(writer, "s", data)
        async with asyncio.timeout(GUARD):
            await pool.all_refused.wait()  # every reader was refused a connection at least once
        assert not any(task.done() for task in tasks)
        await pool.release()
        for data in sent[5:-1]:
            await _append(writer, "s", data)
        await _append(writer, "s", sent[-1], close=True)
        async with asyncio.timeout(GUARD):
            got = await asyncio.gather(*tasks)
        assert got == [sent] * READERS
    finally:
        await _stop(tasks, pool)


async def test_live_readers_waiting_for_the_pool_end_when_redis_goes(
    nodes: tuple[RedisProcess, RedisStore, RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis stops while live readers wait for a pooled connection (the connections held all
    along): they end with the outage (StoreUnavailable: 503 for a request) within seconds,
    not at the end of a long wait, and a read after that fails the same way."""
    server, writer, reader = nodes
    pool = _Pool(reader, READERS, monkeypatch)
    await writer.create_stream("s", CreateSpec(content_type=TEXT))
    await _append(writer, "s", b"first;")
    readers = Readers(reader, asyncio.Event(), 1 << 20)
    await pool.hold_all()
    tasks = [asyncio.create_task(_follow(readers, "s")) for _ in range(READERS)]
    try:
        async with asyncio.timeout(GUARD):
            await pool.all_refused.wait()
        server.stop()
        # (Within the guard, shorter than the readers' own limit on queueing for the pool.)
        assert GUARD < redis_store.READ_QUEUE_LIMIT
        async with asyncio.timeout(GUARD):
            ended = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(outcome, StoreUnavailable) for outcome in ended), ended
        await pool.release()
        with pytest.raises(StoreUnavailable):
            await reader.read("s", 0, 1 << 20)
    finally:
        await _stop(tasks, pool)


async def test_a_reader_of_another_node_s_stream_costs_one_call_per_change(
    nodes: tuple[RedisProcess, RedisStore, RedisStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live reader waiting at the tail of a stream written by another node: woken by each
    append, it reads at once (no look at the stream's head first), and after that read it
    waits again without a look either. One call to Redis per change."""
    _, writer, reader = nodes
    pool = _Pool(reader, READERS, monkeypatch)
    await writer.create_stream("s", CreateSpec(content_type=TEXT))
    waiting = asyncio.Event()  # set when the reader starts a wait
    waiter = reader.notifier.waiter

    def watched(name: str, timeout: float) -> asyncio.Future[bool]:
        future = waiter(name, timeout)
        waiting.set()
        return future

    monkeypatch.setattr(reader.notifier, "waiter", watched)
    task = asyncio.create_task(_follow(Readers(reader, asyncio.Event(), 1 << 20), "s"))
    sent = [f"event {i};".encode() for i in range(10)]
    try:
        async with asyncio.timeout(GUARD):
            for i, data in enumerate(sent):
                await waiting.wait()
                waiting.clear()
                await _append(writer, "s", data, close=i == len(sent) - 1)
            assert await task == sent
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # The first read (at the tail: nothing yet), maybe a look at the head before the first
    # wait (if the stream's creation was heard of while that read was in flight), then one
    # read per append.
    assert pool.given <= 2 + len(sent), pool.given


def _caused(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("exc", "busy"),
    [
        # redis-py's own errors, as its pool and connections raise them.
        (_caused(RedisConnectionError("No connection available."), TimeoutError()), True),
        # A pooled connection whose handshake ran late on an overloaded event loop: seen in
        # bench.relay's unthrottled run with `serve --workers 2`, where it ended live readers.
        (RedisTimeoutError("Timeout connecting to server"), True),
        (RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Refused."), False),
        (RedisTimeoutError("Timeout reading from socket"), False),
        (_caused(RedisConnectionError("Timeout connecting to server"), TimeoutError()), False),
    ],
)
def test_only_a_node_too_busy_to_get_a_connection_counts_as_busy(
    exc: BaseException, busy: bool
) -> None:
    assert redis_store._pool_busy(exc) is busy

"""The processes of ``serve --workers N`` on one SQLite file wake each other after commits
(docs/operations.md, "Several processes: --workers").

Each "process" here is a SQLite store of its own on the shared file, with its own
:class:`~outlast.store.notify.Siblings` socket, all on one event loop. The store's periodic
re-check for other processes' writes is turned off: only the wake-up can end a wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from outlast.models import NewJob
from outlast.store import open_store, sqlite_engine
from outlast.store import template as store_template
from outlast.store.base import AppendSpec, CreateSpec
from outlast.store.notify import Siblings
from outlast.store.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

TEXT = "text/plain"
# A guard: the wait ends at the wake-up, long before this.
GUARD = 10.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[list[SQLiteStore]]:
    monkeypatch.setattr(store_template, "RECHECK_INTERVAL", 3600.0)
    peers = tmp_path / "peers"
    peers.mkdir()
    opened: list[SQLiteStore] = []
    for index in range(3):
        store = await open_store(f"sqlite:///{tmp_path}/shared.db")
        assert isinstance(store, SQLiteStore)
        store.share_wakeups(Siblings(str(peers), index, 3))
        opened.append(store)
    try:
        yield opened
    finally:
        for store in opened:
            await store.close()


def _unit(data: bytes) -> AppendSpec:
    return AppendSpec(content_type=TEXT, unit=(data, 1))


async def test_a_reader_wakes_for_an_append_made_by_a_sibling(
    processes: list[SQLiteStore],
) -> None:
    a, b, _ = processes
    await a.create_stream("live", CreateSpec(content_type=TEXT))
    waiter = asyncio.ensure_future(b.wait("live", 0, 3 * GUARD))
    await asyncio.sleep(0)  # ordering only: the waiter registers first
    await a.append("live", _unit(b"x"))
    assert await asyncio.wait_for(waiter, GUARD) is True
    assert [u.data for u in (await b.read("live", 0, 100)).units] == [b"x"]


async def test_what_a_process_cached_of_a_stream_is_not_trusted_after_a_sibling_appends(
    processes: list[SQLiteStore],
) -> None:
    """b appended last and keeps the stream's tail in memory; a's append makes that stale: a
    reader of b at b's tail is woken, and reads a's unit from the file."""
    a, b, _ = processes
    await b.create_stream("s", CreateSpec(content_type=TEXT))
    tail = (await b.append("s", _unit(b"from b"))).info.tail
    await a.append("s", _unit(b"from a"))
    # Whether the wake-up came before or during this wait, the wait must see a's unit.
    assert await asyncio.wait_for(b.wait("s", tail, 3 * GUARD), GUARD) is True
    read = await b.read("s", tail, 100)
    assert [u.data for u in read.units] == [b"from a"]


async def test_a_submit_wakes_the_idle_claim_loops_of_siblings(
    processes: list[SQLiteStore],
) -> None:
    a, b, c = processes
    events = [b.watch_queue("default"), c.watch_queue("default")]
    await a.submit_job(NewJob(task="t", queue="default", input={}, max_attempts=1, timeout=5), 10)
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), GUARD)
    (claimed,) = await c.claim_jobs("default", "w", 5, 30)
    assert claimed.task == "t"


async def test_a_sibling_that_is_not_listening_is_skipped(
    processes: list[SQLiteStore],
) -> None:
    """A restarting process has no socket for a moment: the others commit as usual, and it
    starts with nothing cached."""
    a, b, c = processes
    await c.close()
    await a.create_stream("s", CreateSpec(content_type=TEXT))
    waiter = asyncio.ensure_future(b.wait("s", 0, 3 * GUARD))
    await asyncio.sleep(0)  # ordering only: the waiter registers first
    await a.append("s", _unit(b"x"))
    assert await asyncio.wait_for(waiter, GUARD) is True


async def test_a_write_waiting_for_the_lock_goes_on_when_a_sibling_commits(
    processes: list[SQLiteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite has one writer at a time: a process that finds the lock taken tries again later
    (a timer, turned off here). A sibling's commit is its moment: it retries at the wake-up."""
    monkeypatch.setattr(sqlite_engine, "BUSY_RETRY", 3600.0)
    a, b, _ = processes
    await a.create_stream("s", CreateSpec(content_type=TEXT))
    assert isinstance(a.engine, sqlite_engine.InlineEngine)
    a.engine.conn.execute("BEGIN IMMEDIATE")  # a holds the write lock
    waiting = asyncio.ensure_future(b.append("s", _unit(b"from b")))
    assert isinstance(b.engine, sqlite_engine.InlineEngine)

    async def b_finds_the_lock_taken() -> None:
        # One loop turn at a time: the engine has no event to wait on.
        while b.engine.busy_since is None:  # noqa: ASYNC110
            await asyncio.sleep(0)

    await asyncio.wait_for(b_finds_the_lock_taken(), GUARD)
    assert not waiting.done()
    a.engine.conn.execute("COMMIT")
    await a.append("s", _unit(b"from a"))
    result = await asyncio.wait_for(waiting, GUARD)
    assert result.info.tail == len(b"from a") + len(b"from b")

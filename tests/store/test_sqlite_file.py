"""What is particular to the SQLite store's file: opening it from several processes at once, and
a WAL that stays bounded under load and shrinks when idle (docs/operations.md, "The SQLite
file")."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from outlast.models import NewJob
from outlast.store import open_store, sqlite_engine
from outlast.store.jobs_logic import Outcome
from outlast.store.sqlite_engine import WAL_MAX_BYTES, wal_size

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_many_openers_of_one_new_file_all_succeed(tmp_path: Path) -> None:
    """``serve --no-jobs`` and ``worker`` started together: each opens (creating and
    migrating) the same new file at the same moment, on its own connections. Threads stand for
    the processes: SQLite's locks are per connection, and the store's open path releases the
    GIL while it waits for them."""
    openers, rounds = 6, 15
    failures: list[str] = []
    for n in range(rounds):
        url = f"sqlite:///{tmp_path}/race{n}.db"
        start = threading.Barrier(openers)

        def open_and_close(url: str = url, start: threading.Barrier = start) -> None:
            async def go() -> None:
                start.wait(timeout=30)
                store = await open_store(url)
                await store.close()

            try:
                asyncio.run(go())
            except Exception as exc:
                failures.append(repr(exc))

        threads = [threading.Thread(target=open_and_close) for _ in range(openers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
    assert failures == []


# Small enough for the idle WAL to count as emptied (the file is truncated to zero).
IDLE_WAL_BYTES = 64 << 10
# The checkpointer's sizes are divided by this (its times by TIME_SCALE) in these tests: the same
# rules prove the same bound, WAL_MAX_BYTES = 4 x WAL_RESTART_BYTES, with a fraction of the writes.
# The bound at the real sizes is what the soak benchmark checks (docs/benchmarks.md).
SIZE_SCALE = 8
TIME_SCALE = 4


@pytest.fixture
def wal_bound(monkeypatch: pytest.MonkeyPatch) -> int:
    """Scales the checkpointer's thresholds down; returns the WAL bound at that scale."""
    for name in ("WAL_RESTART_BYTES", "JOURNAL_SIZE_LIMIT"):
        monkeypatch.setattr(sqlite_engine, name, getattr(sqlite_engine, name) // SIZE_SCALE)
    for name in ("CHECKPOINT_INTERVAL", "IDLE_TRUNCATE"):
        monkeypatch.setattr(sqlite_engine, name, getattr(sqlite_engine, name) / TIME_SCALE)
    return WAL_MAX_BYTES // SIZE_SCALE


async def wait_for_idle_wal(path: Path) -> None:
    """The WAL is folded back and truncated while the store stays open and no commit comes."""
    deadline = time.monotonic() + 20
    while wal_size(str(path)) > IDLE_WAL_BYTES:
        assert time.monotonic() < deadline, f"idle WAL still {wal_size(str(path)):,} bytes"
        await asyncio.sleep(0.05)


# Without the checkpointer's restarts, the jobs of the `fsync = false` variant write about 4 x the
# bound into the WAL. With fsync, SQLite's own checkpoints keep the WAL near 4 MiB, past the
# scaled restart size: that variant checks the restarts and the idle truncation there.
@pytest.mark.parametrize(("fsync", "jobs"), [(False, 1_200), (True, 600)])
async def test_wal_stays_bounded_under_load_and_shrinks_when_idle(
    tmp_path: Path, wal_bound: int, fsync: bool, jobs: int
) -> None:
    """Every job is submitted, claimed, given an event and finished, as a worker does, by a few
    concurrent workers; the WAL is measured after every job."""
    path = tmp_path / "wal.db"
    store = await open_store(f"sqlite:///{path}", fsync=fsync)
    largest = 0
    done = 0

    async def work(worker: int) -> None:
        nonlocal largest, done
        owner = f"w{worker}"
        while done < jobs:
            done += 1
            await store.submit_job(NewJob("t", "q", {"n": done}, 1, 30), 1_000_000)
            for job in await store.claim_jobs("q", owner, 1, 30):
                await store.emit(job.id, owner, 1, [{"type": "log", "n": job.input["n"]}])
                await store.finish_job(job.id, owner, 1, Outcome("succeeded", result=1))
            largest = max(largest, wal_size(str(path)))

    try:
        await asyncio.gather(*(work(i) for i in range(8)))
        counts = await store.queue_counts()
        assert counts["q"].get("succeeded") == jobs
        # The load went past the restart size: the bound below is the restarts' doing.
        assert largest > sqlite_engine.WAL_RESTART_BYTES, f"WAL reached only {largest:,} bytes"
        assert largest <= wal_bound, f"WAL reached {largest:,} bytes"
        await wait_for_idle_wal(path)
    finally:
        await store.close()


async def test_a_wal_restarted_just_before_the_writes_stop_is_emptied_when_idle(
    tmp_path: Path, wal_bound: int
) -> None:
    """The last commit takes the WAL past the restart size; the checkpointer restarts it, which
    leaves the file at that size until a next commit, and none comes."""
    path = tmp_path / "wal.db"
    store = await open_store(f"sqlite:///{path}")
    try:
        n = 0
        while wal_size(str(path)) <= sqlite_engine.WAL_RESTART_BYTES:
            n += 1
            await store.submit_job(NewJob("t", "q", {"n": n, "pad": "x" * 4096}, 1, 30), 1_000_000)
        await wait_for_idle_wal(path)
    finally:
        await store.close()

"""Several stores ("nodes") open on one shared backend: every method is atomic across them.

Each node is a separate :class:`~outlast.store.Store` opened on the same URL, as separate
processes would; operations are interleaved on one event loop so that they truly overlap. The
SQLite file is shared too (one machine); Redis is the backend made for many machines.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from outlast.errors import LeaseLost, QueueFull
from outlast.models import JobState, NewJob
from outlast.store import Store, open_store
from outlast.store.base import AppendSpec, CreateSpec, Outcome
from tests.conftest import RedisProcess, backend_params

SHARED_BACKENDS = backend_params("sqlite", "redis")

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=SHARED_BACKENDS)
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/shared.db"
    return str(request.getfixturevalue("redis_factory")().url)


@pytest.fixture
async def nodes(shared_url: str) -> AsyncIterator[list[Store]]:
    opened = [await open_store(shared_url) for _ in range(3)]
    try:
        yield opened
    finally:
        for store in opened:
            await store.close()


def job(task: str = "t", queue: str = "default", **extra: object) -> NewJob:
    return NewJob(task=task, queue=queue, input=extra, max_attempts=2, timeout=30)


async def test_capacity_is_never_overshot_by_concurrent_submits(nodes: list[Store]) -> None:
    results = await asyncio.gather(
        *(nodes[i % 3].submit_job(job(i=i), 20) for i in range(120)), return_exceptions=True
    )
    accepted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(r, QueueFull) for r in refused), refused
    assert len(accepted) == 20
    counts = await nodes[1].queue_counts()
    assert counts["default"]["queued"] == 20


async def test_each_job_is_claimed_by_one_node(nodes: list[Store]) -> None:
    submitted = [await nodes[i % 3].submit_job(job(i=i), 1000) for i in range(60)]
    claims = await asyncio.gather(
        *(nodes[i % 3].claim_jobs("default", f"owner-{i}", 4, 30) for i in range(30))
    )
    claimed = [j.id for batch in claims for j in batch]
    assert len(claimed) == len(set(claimed)) == 60
    assert set(claimed) == {r.job.id for r in submitted}
    assert await nodes[2].claim_jobs("default", "late", 10, 30) == []


async def test_idempotency_key_admits_once_across_nodes(nodes: list[Store]) -> None:
    results = await asyncio.gather(*(nodes[i % 3].submit_job(job(x=1), 100) for i in range(9)))
    assert len({r.job.id for r in results}) == 9  # no key: nine jobs
    keyed = NewJob(task="t", queue="default", input={"x": 1}, max_attempts=1, timeout=5, key="k")
    results = await asyncio.gather(*(nodes[i % 3].submit_job(keyed, 100) for i in range(9)))
    assert len({r.job.id for r in results}) == 1
    assert sum(r.created for r in results) == 1


async def test_appends_from_all_nodes_get_strictly_increasing_offsets(nodes: list[Store]) -> None:
    await nodes[0].create_stream("s", CreateSpec(content_type="text/plain"))
    spec = AppendSpec(content_type="text/plain", unit=(b"abcd", 1))
    results = await asyncio.gather(*(nodes[i % 3].append("s", spec) for i in range(90)))
    assert sorted(r.info.tail for r in results) == list(range(4, 361, 4))
    read = await nodes[1].read("s", 0, 1 << 20)
    assert [u.start for u in read.units] == list(range(0, 360, 4))


async def test_a_reader_on_one_node_wakes_for_an_append_on_another(nodes: list[Store]) -> None:
    await nodes[0].create_stream("live", CreateSpec(content_type="text/plain"))
    waiter = asyncio.ensure_future(nodes[1].wait("live", 0, 30))
    await asyncio.sleep(0)  # ordering only: the waiter registers first
    await nodes[2].append("live", AppendSpec(content_type="text/plain", unit=(b"x", 1)))
    assert await asyncio.wait_for(waiter, 10) is True
    assert (await nodes[1].read("live", 0, 100)).units[0].data == b"x"


@pytest.fixture
async def redis_nodes(redis_factory: Callable[[], RedisProcess]) -> AsyncIterator[list[Store]]:
    url = redis_factory().url
    opened = [await open_store(url) for _ in range(2)]
    try:
        yield opened
    finally:
        for store in opened:
            await store.close()


async def test_a_worker_on_another_node_is_woken_by_a_submit(redis_nodes: list[Store]) -> None:
    # Redis only: the SQLite store leaves other processes' submissions to the worker's re-check.
    nodes = redis_nodes
    event = nodes[1].watch_queue("default")
    await nodes[0].submit_job(job(), 100)
    await asyncio.wait_for(event.wait(), 10)
    claimed = await nodes[1].claim_jobs("default", "w", 5, 30)
    assert [j.state for j in claimed] == [JobState.RUNNING]


async def test_expired_leases_are_recovered_by_another_node(nodes: list[Store]) -> None:
    submitted = await nodes[0].submit_job(job(), 100)
    (claimed,) = await nodes[0].claim_jobs("default", "dead-node", 1, 0.01)
    recovered: list[object] = []

    async def recovered_elsewhere() -> None:
        while not recovered:
            recovered.extend(await nodes[1].recover_expired())
            await asyncio.sleep(0.01)  # retry until the lease (10 ms) has expired

    await asyncio.wait_for(recovered_elsewhere(), 10)
    assert [j.id for j in recovered] == [submitted.job.id]  # type: ignore[attr-defined]
    (again,) = await nodes[2].claim_jobs("default", "live-node", 1, 30)
    assert again.id == claimed.id and again.attempt == 2
    done = await nodes[2].finish_job(again.id, "live-node", 2, Outcome("succeeded", result=1))
    assert done.state == JobState.SUCCEEDED
    # The dead node's late report is refused: it no longer owns the job.
    with pytest.raises(LeaseLost):
        await nodes[0].finish_job(claimed.id, "dead-node", 1, Outcome("succeeded", result=0))


async def test_redis_acknowledged_writes_survive_a_redis_crash(
    redis_factory: Callable[[], RedisProcess],
) -> None:
    redis = redis_factory()
    store = await open_store(redis.url)
    try:
        await store.create_stream("s", CreateSpec(content_type="text/plain"))
        for part in (b"a", b"b", b"c"):
            await store.append("s", AppendSpec(content_type="text/plain", unit=(part, 1)))
        submitted = await store.submit_job(job(), 100)
    finally:
        await store.close()
    redis.stop(signal.SIGKILL)  # AOF with appendfsync always: nothing acknowledged is lost
    redis.start()
    again = await open_store(redis.url)
    try:
        read = await again.read("s", 0, 1 << 20)
        assert b"".join(u.data for u in read.units) == b"abc"
        assert (await again.get_job(submitted.job.id)).state == JobState.QUEUED
    finally:
        await again.close()

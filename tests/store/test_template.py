"""The store template (:class:`~outlast.store.template.RuleStore`) and what backends plug into it.

A backend's own read paths (Redis reads from its client and caches) must answer as the rules do
over the backend's transaction (the template's defaults); and Redis must still be told, for each
write, what it will read, so that a group fetches it in one round trip.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from outlast.models import NewJob, job_stream_name
from outlast.store import Store, open_store
from outlast.store.base import AppendSpec, CreateSpec, Outcome
from outlast.store.redis import RedisStore
from outlast.store.redis_tx import Due, Field, Members
from outlast.store.template import RuleStore

pytestmark = pytest.mark.anyio


def new_job(queue: str = "default") -> NewJob:
    return NewJob(task="t", queue=queue, input={"n": 1}, max_attempts=2, timeout=30)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store(store_url_factory: Callable[[], str]) -> AsyncIterator[Store]:
    opened = await open_store(store_url_factory())
    try:
        yield opened
    finally:
        await opened.close()


async def test_every_backend_is_the_template(store: Store) -> None:
    assert isinstance(store, RuleStore)


async def test_own_read_paths_agree_with_the_rules(store: Store) -> None:
    assert isinstance(store, RuleStore)
    await store.create_stream("s", CreateSpec(content_type="text/plain"))
    for data in (b"ab", b"cde", b"f"):
        await store.append("s", AppendSpec(content_type="text/plain", unit=(data, 1)))
    submitted = await store.submit_job(new_job(), 10)
    # The template's defaults, called past any override the backend has.
    assert await store.head("s") == await RuleStore.head(store, "s")
    for position in (0, 2, 5):
        own = await store.read("s", position, 1 << 20)
        ruled = await RuleStore._read_stream(store, "s", position, 1 << 20, own.info.touched_at)
        assert (own.units, own.next, own.info) == (ruled.units, ruled.next, ruled.info)
    job = await store.get_job(submitted.job.id)
    assert job == await RuleStore.get_job(store, submitted.job.id) == submitted.job


async def test_redis_prefetches_what_each_write_reads(
    redis_factory: Callable[[], Any],
) -> None:
    store = await open_store(redis_factory().url)
    assert isinstance(store, RedisStore)
    asked: list[list[Any]] = []
    write = store.engine.write

    def spy(op: Any, prefetch: Sequence[Any] = ()) -> Any:
        asked.append(list(prefetch))
        return write(op, prefetch)

    store.engine.write = spy  # type: ignore[method-assign]
    keys = store.keys
    try:
        job_id = (await store.submit_job(new_job("q"), 10)).job.id
        stream = job_stream_name(job_id)
        running = [keys.job(job_id), keys.stream(stream), Members(keys.units(stream))]
        held = await store.reserve_jobs("q", "me", 3, 30)
        await store.unreserve_jobs("me", [(job_id, held[0].run_at)])
        await store.claim_jobs("q", "me", 2, 30)
        await store.renew_leases("me", [job_id], 30)
        await store.emit(job_id, "me", 1, [{"type": "log"}])
        await store.finish_job(job_id, "me", 1, Outcome("release"))
        await store.reserve_jobs("q", "me", 1, 30)
        await store.start_job(job_id, "me", 30)
        await store.cancel_job(job_id)
        await store.recover_expired()
        await store.purge_jobs(0)
    finally:
        await store.close()
    assert asked == [
        [keys.counts("q"), keys.turns("q")],
        [Due("q", 3), keys.paused],
        [keys.job(job_id)],
        [Due("q", 2), keys.paused],
        [keys.job(job_id)],
        [*(Field(keys.job(job_id), f) for f in ("state", "lease_owner", "attempt")), running[1]],
        running,
        [Due("q", 1), keys.paused],
        running,
        running,
        [],
        [],
    ]

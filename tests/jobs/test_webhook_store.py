"""The completion webhook operations of the store contract, on a fresh store of every backend:
the event recorded with the job's end, exclusive leases on attempts, retries, hand-backs,
manual retries and retention (rules: ``outlast/store/webhooks_logic.py``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from outlast.errors import Conflict, LeaseLost, NotFound
from outlast.models import JobRecord, JobState, NewJob
from outlast.store import Store, open_store
from outlast.store.base import DeliveryResult, Outcome
from outlast.store.webhooks_logic import ALL_EVENTS, webhook_id

pytestmark = pytest.mark.anyio

LEASE = 30.0
URL = "http://127.0.0.1:9/hook"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await open_store(store_url)
    try:
        yield opened
    finally:
        await opened.close()


def new(events: list[str] | None = None, *, attempts: int = 1, callback: bool = True) -> NewJob:
    hook = {"url": URL, "events": list(events or ALL_EVENTS)} if callback else None
    return NewJob(task="t", queue="q", input={}, max_attempts=attempts, timeout=10.0, callback=hook)


async def ended(store: Store, kind: str = "succeeded", **submit: Any) -> JobRecord:
    """A job with a callback, claimed and ended with *kind*."""
    job = (await store.submit_job(new(**submit), capacity=100)).job
    [running] = await store.claim_jobs("q", "w", 1, LEASE)
    assert running.id == job.id
    error = {"code": "exception", "message": "no"} if kind == "failed" else None
    return await store.finish_job(job.id, "w", 1, Outcome(kind, result=1, error=error))  # type: ignore[arg-type]


async def test_the_event_is_recorded_with_the_end_of_the_job(store: Store) -> None:
    woken = store.watch_deliveries()
    before = time.time()
    job = await ended(store)
    assert woken.is_set()  # the commit woke this node's delivery loop
    stored = await store.get_job(job.id)
    assert stored == job
    callback = stored.callback
    assert callback is not None
    assert callback["state"] == "pending" and callback["type"] == "job.succeeded"
    assert callback["id"] == webhook_id(job.id) and callback["attempts"] == 0
    assert callback["event_at"] == stored.finished_at
    assert await store.pending_deliveries() == 1
    due = await store.next_delivery_due()
    assert due is not None and before <= due <= time.time()
    shown = stored.to_json()["callback"]
    assert shown["url"] == URL and shown["state"] == "pending" and shown["attempts"] == 0
    assert shown["next_attempt_at"] is not None


async def test_a_job_without_a_callback_or_event_records_none(store: Store) -> None:
    plain = await ended(store, callback=False)
    assert plain.callback is None and "callback" not in plain.to_json()
    only_failed = await ended(store, events=["job.failed"])
    assert only_failed.callback == {"url": URL, "events": ["job.failed"]}
    assert only_failed.to_json()["callback"]["state"] is None
    assert await store.claim_deliveries("d", 10, LEASE) == []
    assert await store.pending_deliveries() == 0
    with pytest.raises(Conflict):
        await store.retry_delivery(only_failed.id)
    with pytest.raises(NotFound):
        await store.retry_delivery(plain.id)
    with pytest.raises(NotFound):
        await store.retry_delivery("job_" + "0" * 32)


async def test_cancel_and_a_spent_lease_record_their_events(store: Store) -> None:
    queued = (await store.submit_job(new(), capacity=100)).job
    cancelled = await store.cancel_job(queued.id)
    assert cancelled.callback is not None and cancelled.callback["type"] == "job.cancelled"
    lost = (await store.submit_job(new(), capacity=100)).job
    await store.claim_jobs("q", "w", 1, 0.0)  # a lease that has expired already
    [failed] = await store.recover_expired()
    assert failed.id == lost.id and failed.state == JobState.FAILED
    assert failed.callback is not None and failed.callback["type"] == "job.failed"
    assert await store.pending_deliveries() == 2


async def test_a_retried_attempt_records_no_event(store: Store) -> None:
    job = (await store.submit_job(new(attempts=2), capacity=100)).job
    await store.claim_jobs("q", "w", 1, LEASE)
    error = {"code": "exception", "message": "again"}
    outcome = Outcome("failed", error=error, retry_at=time.time() + 60)
    queued = await store.finish_job(job.id, "w", 1, outcome)
    assert queued.state == JobState.QUEUED and queued.callback is not None
    assert "state" not in queued.callback and await store.pending_deliveries() == 0


async def test_one_attempt_at_a_time_across_owners(store: Store) -> None:
    job = await ended(store)
    first, second = await asyncio.gather(
        store.claim_deliveries("a", 10, LEASE), store.claim_deliveries("b", 10, LEASE)
    )
    assert sorted([len(first), len(second)]) == [0, 1]
    holder = "a" if first else "b"
    [claimed] = first or second
    assert claimed.id == job.id and claimed.callback is not None
    assert claimed.callback["owner"] == holder
    assert await store.claim_deliveries("c", 10, LEASE) == []
    other = "b" if holder == "a" else "a"
    with pytest.raises(LeaseLost):
        await store.finish_delivery(job.id, other, DeliveryResult("delivered", 200))
    assert await store.renew_deliveries(holder, [job.id], LEASE) == [job.id]
    assert await store.renew_deliveries(other, [job.id], LEASE) == []


async def test_an_expired_lease_lets_another_owner_make_the_attempt_again(store: Store) -> None:
    job = await ended(store)
    [claimed] = await store.claim_deliveries("dead", 10, 0.0)
    [again] = await store.claim_deliveries("alive", 10, LEASE)
    assert again.id == claimed.id and again.callback is not None
    assert again.callback["id"] == webhook_id(job.id) and again.callback["attempts"] == 0
    with pytest.raises(LeaseLost):
        await store.finish_delivery(job.id, "dead", DeliveryResult("delivered", 200))
    done = await store.finish_delivery(job.id, "alive", DeliveryResult("delivered", 200))
    assert done.callback is not None and done.callback["state"] == "delivered"


async def test_attempts_retry_then_deliver_or_fail(store: Store) -> None:
    job = await ended(store)
    await store.claim_deliveries("d", 10, LEASE)
    later = time.time() + 60
    result = DeliveryResult("retry", 500, "HTTP 500", later)
    waiting = await store.finish_delivery(job.id, "d", result)
    assert waiting.callback is not None
    assert waiting.callback["state"] == "pending" and waiting.callback["attempts"] == 1
    assert waiting.callback["last_status"] == 500 and waiting.callback["last_error"] == "HTTP 500"
    assert await store.next_delivery_due() == pytest.approx(later)
    assert await store.claim_deliveries("d", 10, LEASE) == []  # not due yet
    assert await store.pending_deliveries() == 1
    # Retried on request: due now, whatever its state.
    await store.retry_delivery(job.id)
    [claimed] = await store.claim_deliveries("d", 10, LEASE)
    done = await store.finish_delivery(claimed.id, "d", DeliveryResult("delivered", 204))
    assert done.callback is not None
    assert done.callback["state"] == "delivered" and done.callback["attempts"] == 2
    assert done.to_json()["callback"]["next_attempt_at"] is None
    assert await store.pending_deliveries() == 0 and await store.next_delivery_due() is None
    gone = await ended(store)
    await store.claim_deliveries("d", 10, LEASE)
    failed = await store.finish_delivery(gone.id, "d", DeliveryResult("failed", 410, "gone"))
    assert failed.callback is not None and failed.callback["state"] == "failed"
    assert await store.pending_deliveries() == 0


async def test_a_retry_asked_during_an_attempt_sends_it_once_more(store: Store) -> None:
    job = await ended(store)
    await store.claim_deliveries("d", 10, LEASE)
    asked = await store.retry_delivery(job.id)
    assert asked.callback is not None and asked.callback["owner"] == "d"  # still in flight
    assert await store.claim_deliveries("e", 10, LEASE) == []
    after = await store.finish_delivery(job.id, "d", DeliveryResult("delivered", 200))
    assert after.callback is not None and after.callback["state"] == "pending"
    [again] = await store.claim_deliveries("e", 10, LEASE)
    assert again.callback is not None and again.callback["id"] == webhook_id(job.id)


async def test_handed_back_attempts_are_due_at_once_and_not_counted(store: Store) -> None:
    job = await ended(store)
    await store.claim_deliveries("d", 10, LEASE)
    woken = store.watch_deliveries()
    assert await store.release_deliveries("d", [job.id]) == 1
    assert woken.is_set()
    assert await store.release_deliveries("d", [job.id]) == 0
    [claimed] = await store.claim_deliveries("e", 10, LEASE)
    assert claimed.callback is not None and claimed.callback["attempts"] == 0


async def test_retention_removes_deliveries_with_their_jobs(store: Store) -> None:
    job = await ended(store)
    assert await store.pending_deliveries() == 1
    assert await store.purge_jobs(time.time() + 1) == 1
    with pytest.raises(NotFound):
        await store.get_job(job.id)
    assert await store.pending_deliveries() == 0 and await store.next_delivery_due() is None
    assert await store.claim_deliveries("d", 10, LEASE) == []

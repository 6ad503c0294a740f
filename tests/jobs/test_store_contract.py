"""The job rules of the store contract (:class:`outlast.store.base.JobStore`), called directly on
a fresh store of every backend: admission, exclusive claims, leases, attempts, cancel, recovery,
retention. Leases of 0 s expire at once, so recovery is tested without waiting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from outlast.errors import BadRequest, Conflict, LeaseLost, NotFound, QueueFull
from outlast.models import JobState, NewJob, job_stream_name
from outlast.store import Store, open_store
from outlast.store.base import Outcome, SubmitResult

pytestmark = pytest.mark.anyio

LEASE = 30.0


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


def new(
    task: str = "t",
    *,
    queue: str = "q",
    delay: float = 0.0,
    attempts: int = 3,
    key: str | None = None,
    value: object = None,
) -> NewJob:
    return NewJob(
        task=task,
        queue=queue,
        input=value if value is not None else {},
        max_attempts=attempts,
        timeout=10.0,
        delay=delay,
        key=key,
    )


async def messages(store: Store, job_id: str) -> list[dict[str, object]]:
    import json

    result = await store.read(job_stream_name(job_id), 0, 1 << 20)
    return [m for u in result.units for m in json.loads(b"[" + u.data + b"]")]


async def test_submit_get_and_idempotency(store: Store) -> None:
    first = await store.submit_job(new(key="k", value={"a": 1}), capacity=10)
    assert first.created
    job = await store.get_job(first.job.id)
    assert job.state == JobState.QUEUED and job.attempt == 0 and job.key == "k"
    again = await store.submit_job(new(key="k", value={"a": 1}), capacity=10)
    assert not again.created and again.job.id == first.job.id
    with pytest.raises(Conflict):
        await store.submit_job(new(key="k", value={"a": 2}), capacity=10)
    with pytest.raises(Conflict):
        await store.submit_job(new("other", key="k", value={"a": 1}), capacity=10)
    with pytest.raises(NotFound):
        await store.get_job("job_" + "0" * 32)
    assert await messages(store, job.id) == [{"type": "state", "state": "queued", "attempt": 0}]


async def test_admission_never_overshoots_under_concurrent_submits(store: Store) -> None:
    async def one() -> bool:
        try:
            await store.submit_job(new(), capacity=10)
        except QueueFull:
            return False
        return True

    admitted = await asyncio.gather(*(one() for _ in range(60)))
    assert sum(admitted) == 10
    assert (await store.queue_counts())["q"]["queued"] == 10
    # Another queue has its own capacity.
    await store.submit_job(new(queue="other"), capacity=10)


async def test_submit_jobs_admits_or_refuses_each_job_in_order(store: Store) -> None:
    earlier = await store.submit_job(new(key="old", value={"a": 1}), capacity=3)
    woken = store.watch_queue("q")
    outcomes = await store.submit_jobs(
        [
            (new(value={"n": 1}), 3),
            (new(key="old", value={"a": 1}), 3),  # the job submitted before
            (new(key="old", value={"a": 2}), 3),  # its key, another input
            (new(key="k", value={"n": 2}), 3),  # admitted: the queue is full now
            (new(key="k", value={"n": 2}), 3),  # the job admitted just above
            (new(key="k", value={"n": 3}), 3),  # a conflict within the batch
            (new(value={"n": 4}), 3),  # over capacity
            (new(queue="other"), 3),  # another queue has room
        ]
    )
    kinds = [
        type(o).__name__ if not isinstance(o, SubmitResult) else ("new" if o.created else "old")
        for o in outcomes
    ]
    assert kinds == ["new", "old", "Conflict", "new", "old", "Conflict", "QueueFull", "new"]
    assert isinstance(outcomes[1], SubmitResult) and outcomes[1].job.id == earlier.job.id
    assert isinstance(outcomes[3], SubmitResult) and isinstance(outcomes[4], SubmitResult)
    assert outcomes[4].job.id == outcomes[3].job.id
    counts = await store.queue_counts()
    assert counts["q"]["queued"] == 3 and counts["other"]["queued"] == 1
    await asyncio.wait_for(woken.wait(), timeout=10)
    for outcome in outcomes:
        if isinstance(outcome, SubmitResult):
            stored = await store.get_job(outcome.job.id)
            assert stored.state == JobState.QUEUED and stored.input == outcome.job.input
            assert await messages(store, stored.id) == [
                {"type": "state", "state": "queued", "attempt": 0}
            ]
    # Claims take the batch's jobs in their order.
    claimed = await store.claim_jobs("q", "w", 10, LEASE)
    assert [j.id for j in claimed] == [earlier.job.id, outcomes[0].job.id, outcomes[3].job.id]
    assert await store.submit_jobs([]) == []


async def test_concurrent_batches_never_overshoot_capacity(store: Store) -> None:
    batches = await asyncio.gather(
        *(
            store.submit_jobs([(new(value={"b": b, "i": i}), 25) for i in range(10)])
            for b in range(8)
        )
    )
    admitted = [o for outcomes in batches for o in outcomes if isinstance(o, SubmitResult)]
    refused = [o for outcomes in batches for o in outcomes if isinstance(o, QueueFull)]
    assert len(admitted) == 25 and len(refused) == 55
    assert (await store.queue_counts())["q"]["queued"] == 25


async def test_claims_are_exclusive_ordered_and_respect_delay(store: Store) -> None:
    ids = [(await store.submit_job(new(), capacity=100)).job.id for _ in range(20)]
    later = (await store.submit_job(new(delay=3600), capacity=100)).job.id
    due = await store.next_due("q")
    assert due is not None and due <= time.time()

    claims = await asyncio.gather(
        *(store.claim_jobs("q", f"owner-{i}", 3, LEASE) for i in range(10))
    )
    claimed = [job.id for batch in claims for job in batch]
    assert sorted(claimed) == sorted(ids)  # each once; the delayed one not at all
    assert all(len(batch) <= 3 for batch in claims)
    for batch in claims:
        for job in batch:
            assert job.state == JobState.RUNNING and job.attempt == 1
            assert job.lease_expires is not None and job.lease_expires > time.time()
    assert await store.claim_jobs("q", "late", 5, LEASE) == []
    next_due = await store.next_due("q")
    assert next_due is not None and next_due > time.time() + 3000
    assert (await store.get_job(later)).state == JobState.QUEUED
    # First come, first served.
    one_by_one = await store.submit_job(new(queue="fifo"), capacity=100)
    two = await store.submit_job(new(queue="fifo"), capacity=100)
    got = await store.claim_jobs("fifo", "o", 1, LEASE)
    assert [j.id for j in got] == [one_by_one.job.id]
    assert [j.id for j in await store.claim_jobs("fifo", "o", 1, LEASE)] == [two.job.id]


async def test_only_the_lease_holder_renews_emits_and_finishes(store: Store) -> None:
    job_id = (await store.submit_job(new(), capacity=10)).job.id
    [job] = await store.claim_jobs("q", "me", 1, LEASE)
    assert job.id == job_id
    owned, cancel = await store.renew_leases("me", [job_id], LEASE)
    assert owned == [job_id] and cancel == []
    assert await store.renew_leases("you", [job_id], LEASE) == ([], [])
    await store.emit(job_id, "me", 1, [{"type": "output", "data": 1}])
    with pytest.raises(LeaseLost):
        await store.emit(job_id, "you", 1, [{"type": "output", "data": 2}])
    with pytest.raises(LeaseLost):
        await store.emit(job_id, "me", 2, [{"type": "output", "data": 3}])
    with pytest.raises(LeaseLost):
        await store.finish_job(job_id, "you", 1, Outcome("succeeded", result=1))
    done = await store.finish_job(job_id, "me", 1, Outcome("succeeded", result={"r": 1}))
    assert done.state == JobState.SUCCEEDED and done.result == {"r": 1}
    assert done.finished_at is not None and done.lease_owner is None
    with pytest.raises(LeaseLost):
        await store.finish_job(job_id, "me", 1, Outcome("succeeded", result=1))
    assert (await store.head(job_stream_name(job_id))).closed
    assert await messages(store, job_id) == [
        {"type": "state", "state": "queued", "attempt": 0},
        {"type": "state", "state": "running", "attempt": 1},
        {"type": "output", "data": 1},
        {"type": "result", "result": {"r": 1}},
        {"type": "state", "state": "succeeded", "attempt": 1},
    ]


async def test_failed_attempts_retry_then_fail_and_release_spends_nothing(store: Store) -> None:
    job_id = (await store.submit_job(new(attempts=2), capacity=10)).job.id
    error = {"code": "exception", "message": "boom"}
    await store.claim_jobs("q", "me", 1, LEASE)
    # Handed back (shutdown): the attempt does not count.
    back = await store.finish_job(job_id, "me", 1, Outcome("release"))
    assert back.state == JobState.QUEUED and back.attempt == 0
    [again] = await store.claim_jobs("q", "me", 1, LEASE)
    assert again.attempt == 1
    retry_at = time.time() + 3600
    queued = await store.finish_job(
        job_id, "me", 1, Outcome("failed", error=error, retry_at=retry_at)
    )
    assert queued.state == JobState.QUEUED and queued.attempt == 1
    assert queued.error is None  # only a failed or cancelled job has an error; see below
    assert await store.claim_jobs("q", "me", 1, LEASE) == []  # not before its backoff
    assert await store.next_due("q") == pytest.approx(retry_at)
    # A job waiting for its retry is queued: a cancel ends it at once.
    assert (await store.cancel_job(job_id)).state == JobState.CANCELLED

    other = (await store.submit_job(new(attempts=2), capacity=10)).job.id
    await store.claim_jobs("q", "me", 1, LEASE)
    await store.finish_job(other, "me", 1, Outcome("failed", error=error, retry_at=time.time()))
    [second] = await store.claim_jobs("q", "me", 1, LEASE)
    assert second.attempt == 2
    failed = await store.finish_job(
        other, "me", 2, Outcome("failed", error=error, retry_at=time.time())
    )
    assert failed.state == JobState.FAILED and failed.attempt == 2
    states = [m for m in await messages(store, other) if m["type"] in ("state", "error")]
    assert [(m["type"], m.get("state"), m["attempt"]) for m in states] == [
        ("state", "queued", 0),
        ("state", "running", 1),
        ("error", None, 1),
        ("state", "queued", 1),
        ("state", "running", 2),
        ("error", None, 2),
        ("state", "failed", 2),
    ]


async def test_a_job_has_an_error_only_when_failed_or_cancelled(store: Store) -> None:
    """A job's error describes its outcome; each failed attempt's error is in its stream."""
    first = {"code": "exception", "message": "RuntimeError: first"}
    job_id = (await store.submit_job(new(attempts=3), capacity=10)).job.id
    await store.claim_jobs("q", "me", 1, LEASE)
    retry = await store.finish_job(
        job_id, "me", 1, Outcome("failed", error=first, retry_at=time.time())
    )
    assert retry.state == JobState.QUEUED and retry.error is None
    [running] = await store.claim_jobs("q", "me", 1, LEASE)
    assert running.attempt == 2 and running.error is None
    done = await store.finish_job(job_id, "me", 2, Outcome("succeeded", result=1))
    assert done.state == JobState.SUCCEEDED and done.error is None
    assert (await store.get_job(job_id)).error is None
    errors = [m for m in await messages(store, job_id) if m["type"] == "error"]
    assert errors == [{"type": "error", "attempt": 1, "error": first}]

    last = {"code": "timeout", "message": "attempt exceeded its 10 s timeout"}
    other = (await store.submit_job(new(attempts=2), capacity=10)).job.id
    await store.claim_jobs("q", "me", 1, LEASE)
    await store.finish_job(other, "me", 1, Outcome("failed", error=first, retry_at=time.time()))
    await store.claim_jobs("q", "me", 1, LEASE)
    failed = await store.finish_job(other, "me", 2, Outcome("failed", error=last, retry_at=None))
    assert failed.state == JobState.FAILED and failed.error == last


async def test_cancel_queued_running_and_terminal(store: Store) -> None:
    queued = (await store.submit_job(new(), capacity=10)).job.id
    done = await store.cancel_job(queued)
    assert done.state == JobState.CANCELLED and done.error is not None
    assert (await store.cancel_job(queued)) == done  # idempotent
    assert (await store.head(job_stream_name(queued))).closed

    running = (await store.submit_job(new(), capacity=10)).job.id
    await store.claim_jobs("q", "me", 1, LEASE)
    flagged = await store.cancel_job(running)
    assert flagged.state == JobState.RUNNING and flagged.cancel_requested
    assert await store.renew_leases("me", [running], LEASE) == ([running], [running])
    cancelled = await store.finish_job(running, "me", 1, Outcome("cancelled"))
    assert cancelled.state == JobState.CANCELLED
    with pytest.raises(NotFound):
        await store.cancel_job("job_" + "0" * 32)
    counts = (await store.queue_counts())["q"]
    assert counts["cancelled"] == 2 and counts.get("running", 0) == 0


async def test_expired_leases_are_recovered(store: Store) -> None:
    retry = (await store.submit_job(new(attempts=2), capacity=10)).job.id
    spent = (await store.submit_job(new(attempts=1), capacity=10)).job.id
    cancel = (await store.submit_job(new(attempts=2), capacity=10)).job.id
    kept = (await store.submit_job(new(queue="k"), capacity=10)).job.id
    assert len(await store.claim_jobs("q", "gone", 3, 0.0)) == 3  # leases expire at once
    await store.claim_jobs("k", "alive", 1, LEASE)
    await store.cancel_job(cancel)
    recovered = {job.id: job for job in await store.recover_expired()}
    assert set(recovered) == {retry, spent, cancel}
    assert recovered[retry].state == JobState.QUEUED and recovered[retry].attempt == 1
    assert recovered[spent].state == JobState.FAILED
    assert recovered[spent].error is not None
    assert recovered[spent].error["code"] == "lease_lost"
    assert recovered[cancel].state == JobState.CANCELLED
    assert (await store.get_job(kept)).state == JobState.RUNNING
    assert await store.recover_expired() == []
    assert {"type": "state", "state": "queued", "attempt": 1, "reason": "lease_expired"} in (
        await messages(store, retry)
    )
    # The old holder can no longer report on it.
    with pytest.raises(LeaseLost):
        await store.finish_job(retry, "gone", 1, Outcome("succeeded", result=1))
    [again] = await store.claim_jobs("q", "new", 1, LEASE)
    assert again.id == retry and again.attempt == 2


async def test_purge_removes_old_terminal_jobs_and_their_streams(store: Store) -> None:
    old = (await store.submit_job(new(), capacity=10)).job.id
    await store.cancel_job(old)
    waiting = (await store.submit_job(new(delay=3600), capacity=10)).job.id
    running = (await store.submit_job(new(queue="r"), capacity=10)).job.id
    await store.claim_jobs("r", "me", 1, LEASE)
    assert await store.purge_jobs(time.time() - 3600) == 0  # not old enough yet
    assert await store.purge_jobs(time.time() + 1) == 1
    with pytest.raises(NotFound):
        await store.get_job(old)
    with pytest.raises(NotFound):
        await store.head(job_stream_name(old))
    assert (await store.get_job(waiting)).state == JobState.QUEUED
    assert (await store.get_job(running)).state == JobState.RUNNING
    assert (await store.queue_counts())["q"].get("cancelled", 0) == 0


async def test_list_pages_newest_first_with_filters(store: Store) -> None:
    ids = [
        (await store.submit_job(new("a" if i % 2 else "b"), capacity=100)).job.id for i in range(9)
    ]
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_jobs(limit=4, cursor=cursor)
        seen += [j.id for j in page.jobs]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)
    only_a = await store.list_jobs(task="a")
    assert [j.id for j in only_a.jobs] == sorted(ids[1::2], reverse=True)
    assert (await store.list_jobs(state=JobState.RUNNING)).jobs == []
    assert (await store.list_jobs(queue="nowhere")).jobs == []
    with pytest.raises(BadRequest):
        await store.list_jobs(cursor="garbage")


async def test_watch_queue_is_set_by_a_submission(store: Store) -> None:
    event = store.watch_queue("q")
    assert not event.is_set()
    await store.submit_job(new(), capacity=10)
    await asyncio.wait_for(event.wait(), timeout=10)


async def test_reserved_jobs_stay_queued_hidden_from_claims_until_started(store: Store) -> None:
    ids = [(await store.submit_job(new(), capacity=10)).job.id for _ in range(3)]
    held = await store.reserve_jobs("q", "w1", 2, hold=30.0)
    assert [j.id for j in held] == ids[:2]
    assert all(j.state == JobState.QUEUED and j.attempt == 0 for j in held)
    # Not running, not counted as running: only a started job is.
    assert (await store.queue_counts())["q"] == {"queued": 3}
    assert (await store.get_job(ids[0])).state == JobState.QUEUED
    # Another worker's claim passes them by.
    assert [j.id for j in await store.claim_jobs("q", "w2", 10, LEASE)] == [ids[2]]
    with pytest.raises(LeaseLost):
        await store.start_job(ids[0], "w2", LEASE)
    started = await store.start_job(ids[0], "w1", LEASE)
    assert started.state == JobState.RUNNING and started.attempt == 1
    assert started.lease_owner == "w1" and started.started_at is not None
    assert (await store.queue_counts())["q"] == {"queued": 1, "running": 2}
    assert (await messages(store, ids[0]))[-1] == {
        "type": "state",
        "state": "running",
        "attempt": 1,
    }
    with pytest.raises(LeaseLost):  # started once only
        await store.start_job(ids[0], "w1", LEASE)
    await store.finish_job(ids[0], "w1", 1, Outcome("succeeded", result=1))
    assert (await store.get_job(ids[0])).state == JobState.SUCCEEDED


async def test_unreserved_and_expired_reservations_are_claimable_again(store: Store) -> None:
    first = (await store.submit_job(new(), capacity=10)).job
    second = (await store.submit_job(new(), capacity=10)).job
    held = await store.reserve_jobs("q", "w1", 2, hold=30.0)
    assert [j.id for j in held] == [first.id, second.id]
    assert await store.claim_jobs("q", "w2", 10, LEASE) == []
    # Handed back by its holder (only): in its old place in the queue, no attempt spent.
    assert await store.unreserve_jobs("w1", [(first.id, first.run_at)]) == 1
    assert await store.unreserve_jobs("w2", [(second.id, second.run_at)]) == 0
    claimed = await store.claim_jobs("q", "w2", 10, LEASE)
    assert [(j.id, j.attempt) for j in claimed] == [(first.id, 1)]
    with pytest.raises(LeaseLost):
        await store.start_job(first.id, "w1", LEASE)
    # A hold that ended (its worker died, say) frees the job for anyone.
    third = (await store.submit_job(new(), capacity=10)).job
    assert [j.id for j in await store.reserve_jobs("q", "w3", 5, hold=0.0)] == [third.id]
    assert [j.id for j in await store.claim_jobs("q", "w2", 10, LEASE)] == [third.id]
    assert (await store.get_job(second.id)).state == JobState.QUEUED  # still held by w1


async def test_a_cancelled_reservation_cannot_start(store: Store) -> None:
    job = (await store.submit_job(new(), capacity=10)).job
    await store.reserve_jobs("q", "w1", 1, hold=30.0)
    assert (await store.cancel_job(job.id)).state == JobState.CANCELLED
    with pytest.raises(LeaseLost):
        await store.start_job(job.id, "w1", LEASE)
    assert await store.unreserve_jobs("w1", [(job.id, job.run_at)]) == 0
    assert (await store.get_job(job.id)).state == JobState.CANCELLED


async def test_a_jobs_live_readers_read_its_events_from_memory_never_stale(store: Store) -> None:
    """Readers at the tail of a job's stream (a relay's) get each emitted event from the
    recent-units cache, as readers of an append do, and the cache is never older than the
    store: the job's end, committed by another rule, replaces or drops what it held."""
    import json

    from outlast.store.template import RuleStore

    assert isinstance(store, RuleStore)
    job_id = (await store.submit_job(new(), capacity=10)).job.id
    await store.claim_jobs("q", "me", 1, LEASE)
    name = job_stream_name(job_id)
    before = (await store.head(name)).tail
    await store.emit(
        job_id, "me", 1, [{"type": "output", "data": 1}, {"type": "output", "data": 2}]
    )
    cached = store.recent.read(name, before, 1 << 20)
    assert cached is not None
    assert [json.loads(unit.data) for unit in cached.units] == [
        {"type": "output", "data": 1},
        {"type": "output", "data": 2},
    ]
    assert cached.next == (await store.head(name)).tail
    await store.finish_job(job_id, "me", 1, Outcome("succeeded", result=1))
    head = await store.head(name)
    assert head.closed and head.tail > cached.next
    kept = store.recent.info(name)
    assert kept is None or (kept.closed and kept.tail == head.tail)
    end = await store.read(name, cached.next, 1 << 20)
    assert end.info.closed and [json.loads(u.data)["type"] for u in end.units] == [
        "result",
        "state",
    ]

"""Every store method written once, over a backend's transaction and engine (:class:`RuleStore`).

A write is a rule (a synchronous function of a :class:`~outlast.store.jobs_logic.JobTx` and
``now``, from :mod:`~outlast.store.streams_logic` or :mod:`~outlast.store.jobs_logic`) run in one
transaction by the backend's engine: :meth:`RuleStore._change`. What the rule will read can be
named ahead (*prefetch*): a backend that pays a round trip per read (Redis) fetches it all at
once; one that does not (SQLite) is given nothing to fetch, at no cost.

Reads go through :meth:`RuleStore._view`, a read-only transaction, unless a backend answers
them faster from its own structures (Redis reads straight from its client and keeps the rows it
wrote last); the few queries no rule needs (listing, counts, the next due time) are the
backend's own.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from outlast.errors import BadRequest, NotFound, RequestError, StoreError
from outlast.models import JobRecord, JobState, NewJob
from outlast.store import jobs_logic as jobs
from outlast.store import streams_logic as logic
from outlast.store import webhooks_logic as webhooks
from outlast.store.base import (
    AppendResult,
    AppendSpec,
    CreateResult,
    CreateSpec,
    DeliveryResult,
    JobPage,
    Outcome,
    ReadResult,
    Store,
    StreamInfo,
    SubmitResult,
    UpstreamLimits,
)
from outlast.store.jobs_logic import JobTx
from outlast.store.notify import Notifier
from outlast.store.recent import RecentUnits
from outlast.store.streams_logic import Changed

T = TypeVar("T")
P = TypeVar("P")  # what a backend can fetch ahead of a transaction (its prefetch hints)

# Terminal jobs removed per transaction by a retention purge: one purge never makes one long
# transaction that every other write waits behind.
PURGE_SLICE = 500
# How often expired streams are swept (reads also check expiry on every access).
SWEEP_INTERVAL = 30.0
# How often a waiting reader re-checks the store for writes it was not told about (other
# processes', when the backend does not hear them).
RECHECK_INTERVAL = 1.0

Rule = Callable[[JobTx, float], Changed[T]]


@dataclass(frozen=True, slots=True)
class JobFilter:
    """What a listing asks for (``None``: any)."""

    state: JobState | None
    queue: str | None
    task: str | None

    def matches(self, job: JobRecord) -> bool:
        return (
            (self.state is None or job.state == self.state)
            and (self.queue is None or job.queue == self.queue)
            and (self.task is None or job.task == self.task)
        )


class RuleStore(Store, Generic[P]):
    """The contract, implemented once over :meth:`_change` and :meth:`_view`.

    A backend sets :attr:`notifier` (wakes local readers and idle workers after each commit)
    and :attr:`recent` (the units it committed last, for readers at the tail).
    """

    notifier: Notifier
    recent: RecentUnits

    # -- what a backend supplies ---------------------------------------------------------------

    @abc.abstractmethod
    def _change(self, rule: Rule[T], prefetch: Sequence[P] = ()) -> Awaitable[Changed[T]]:
        """Run *rule* in one write transaction of the engine: the result once committed."""

    @abc.abstractmethod
    def _view(self, query: Callable[[JobTx], T]) -> Awaitable[T]:
        """Run *query* in one read-only transaction."""

    @abc.abstractmethod
    async def _find_jobs(self, where: JobFilter, below: str | None, limit: int) -> list[JobRecord]:
        """Jobs *where* matches with ids below *below*, newest first: at least *limit* of them
        when there are that many (the template keeps the first *limit*)."""

    # What each kind of operation reads, for a backend that fetches it ahead; none by default.

    def _prefetch_submit(self, new: NewJob) -> Sequence[P]:
        """Admission: the queue's counts and turns."""
        return ()

    def _prefetch_due(self, queue: str, limit: int) -> Sequence[P]:
        """A claim or a reservation: up to *limit* due jobs of *queue*."""
        return ()

    def _prefetch_jobs(self, job_ids: list[str]) -> Sequence[P]:
        """Renewing leases: the jobs."""
        return ()

    def _prefetch_held(self, held: list[tuple[str, float]]) -> Sequence[P]:
        """Handing back reservations, as (job id, run_at): the jobs."""
        return ()

    def _prefetch_running(self, job_id: str) -> Sequence[P]:
        """An attempt's steps and a cancel: the job and its stream."""
        return ()

    def _prefetch_emit(self, job_id: str) -> Sequence[P]:
        """An emit: the job's lease and its stream."""
        return self._prefetch_running(job_id)

    # -- streams ---------------------------------------------------------------------------

    async def create_stream(self, name: str, spec: CreateSpec) -> CreateResult:
        changed = await self._change(lambda tx, now: logic.create(tx, name, spec, now))
        result = changed.value
        if result.created:
            self.recent.forget(name)
        return result

    async def append(self, name: str, spec: AppendSpec) -> AppendResult:
        changed = await self._change(lambda tx, now: logic.append(tx, name, spec, now))
        self.recent.appended(name, spec, changed.value)
        return changed.value

    async def delete_stream(self, name: str) -> None:
        # Forgotten before too: readers woken by the commit run before this coroutine resumes.
        self.recent.forget(name)
        await self._change(lambda tx, now: logic.delete(tx, name, now))
        self.recent.forget(name)

    def _read_stream(
        self, name: str, position: int, max_bytes: int, now: float
    ) -> Awaitable[ReadResult]:
        return self._view(lambda tx: logic.read(tx, name, position, max_bytes, now))

    async def read(self, name: str, position: int, max_bytes: int) -> ReadResult:
        cached = self.recent.read(name, position, max_bytes)
        if cached is not None:
            return cached
        now = time.time()
        result = await self._read_stream(name, position, max_bytes, now)
        if logic.needs_touch(result.info, now):
            stream_id = result.info.id
            # Sliding TTL: an access renews the stream (if it is still the same stream).
            await self._change(lambda tx, t: logic.touch(tx, name, stream_id, t))
        return result

    async def head(self, name: str) -> StreamInfo:
        now = time.time()
        return await self._view(lambda tx: logic.head(tx, name, now))

    async def wait(self, name: str, position: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        # First check: what this process committed last, when it is kept (a commit updates it
        # before waking anyone); after each re-check period: the store, for other processes.
        info = self.recent.info(name)
        while True:
            remaining = deadline - time.monotonic()
            # Register before checking, so that a commit after the check still wakes us.
            waiter = self.notifier.waiter(name, min(max(remaining, 0), RECHECK_INTERVAL))
            try:
                if info is None:
                    info = await self.head(name)
                if info.tail > position or info.closed:
                    return True
                if remaining <= 0:
                    return False
                if await waiter:
                    return True
            finally:
                waiter.cancel()
            info = None

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await self._change(logic.sweep_expired)
            except StoreError as exc:
                logging.getLogger(type(self).__module__).warning("expiry sweep failed: %s", exc)

    # -- jobs ------------------------------------------------------------------------------

    async def submit_job(self, new: NewJob, capacity: int) -> SubmitResult:
        changed = await self._change(
            lambda tx, now: jobs.submit(tx, new, capacity, now), self._prefetch_submit(new)
        )
        return changed.value

    async def submit_jobs(
        self, batch: Sequence[tuple[NewJob, int]]
    ) -> list[SubmitResult | RequestError]:
        prefetch = list(dict.fromkeys(p for new, _ in batch for p in self._prefetch_submit(new)))
        changed = await self._change(lambda tx, now: jobs.submit_many(tx, batch, now), prefetch)
        return changed.value

    async def get_job(self, job_id: str) -> JobRecord:
        job = await self._view(lambda tx: tx.get_job(job_id))
        if job is None:
            raise NotFound(f"job not found: {job_id}", code="job_not_found")
        return job

    async def list_jobs(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        if cursor is not None and not cursor.startswith("job_"):
            raise BadRequest("malformed cursor", code="invalid_cursor")
        found = await self._find_jobs(JobFilter(state, queue, task), cursor, limit + 1)
        page = found[:limit]
        return JobPage(page, page[-1].id if len(found) > limit else None)

    async def claim_jobs(
        self, queue: str, owner: str, limit: int, lease: float, per_key: int = 0
    ) -> list[JobRecord]:
        changed = await self._change(
            lambda tx, now: jobs.claim(tx, queue, owner, limit, lease, now, per_key),
            self._prefetch_due(queue, limit),
        )
        return changed.value

    async def reserve_jobs(
        self, queue: str, owner: str, limit: int, hold: float
    ) -> list[JobRecord]:
        changed = await self._change(
            lambda tx, now: jobs.reserve(tx, queue, owner, limit, hold, now),
            self._prefetch_due(queue, limit),
        )
        return changed.value

    async def start_job(self, job_id: str, owner: str, lease: float) -> JobRecord:
        changed = await self._change(
            lambda tx, now: jobs.start(tx, job_id, owner, lease, now),
            self._prefetch_running(job_id),
        )
        return changed.value

    async def unreserve_jobs(self, owner: str, held: list[tuple[str, float]]) -> int:
        changed = await self._change(
            lambda tx, now: jobs.unreserve(tx, owner, held, now), self._prefetch_held(held)
        )
        return changed.value

    async def renew_leases(
        self, owner: str, job_ids: list[str], lease: float
    ) -> tuple[list[str], list[str]]:
        changed = await self._change(
            lambda tx, now: jobs.renew(tx, owner, job_ids, lease, now),
            self._prefetch_jobs(job_ids),
        )
        return changed.value

    async def emit(
        self, job_id: str, owner: str, attempt: int, messages: list[dict[str, Any]]
    ) -> None:
        await self._change(
            lambda tx, now: jobs.emit(tx, job_id, owner, attempt, messages, now),
            self._prefetch_emit(job_id),
        )

    async def finish_job(
        self, job_id: str, owner: str, attempt: int, outcome: Outcome
    ) -> JobRecord:
        changed = await self._change(
            lambda tx, now: jobs.finish(tx, job_id, owner, attempt, outcome, now),
            self._prefetch_running(job_id),
        )
        return changed.value

    async def cancel_job(self, job_id: str) -> JobRecord:
        changed = await self._change(
            lambda tx, now: jobs.cancel(tx, job_id, now), self._prefetch_running(job_id)
        )
        return changed.value

    async def retry_job(self, job_id: str, capacity: int) -> SubmitResult:
        changed = await self._change(lambda tx, now: jobs.retry(tx, job_id, capacity, now))
        return changed.value

    async def acquire_upstream(
        self, name: str, holder: str, limits: UpstreamLimits, hold: float
    ) -> tuple[float, str] | None:
        changed = await self._change(
            lambda tx, now: jobs.acquire_upstream(tx, name, holder, limits, hold, now)
        )
        return changed.value

    async def release_upstream(self, name: str, holder: str, tokens: int) -> None:
        await self._change(lambda tx, now: jobs.release_upstream(tx, name, holder, tokens, now))

    async def pause_queue(self, queue: str, paused: bool) -> None:
        await self._change(lambda tx, now: jobs.pause(tx, queue, paused, now))

    async def paused_queues(self) -> set[str]:
        return await self._view(lambda tx: tx.paused_queues())

    async def recover_expired(self) -> list[JobRecord]:
        return (await self._change(jobs.recover_expired)).value

    async def purge_jobs(self, finished_before: float) -> int:
        total = 0
        while True:  # in slices: see PURGE_SLICE
            changed = await self._change(
                lambda tx, now: jobs.purge(tx, finished_before, PURGE_SLICE, now)
            )
            total += changed.value
            if changed.value < PURGE_SLICE:
                return total

    def watch_queue(self, queue: str) -> asyncio.Event:
        return self.notifier.event(jobs.queue_key(queue))

    # -- completion webhooks ---------------------------------------------------------------

    async def claim_deliveries(self, owner: str, limit: int, lease: float) -> list[JobRecord]:
        changed = await self._change(lambda tx, now: webhooks.claim(tx, owner, limit, lease, now))
        return changed.value

    async def renew_deliveries(self, owner: str, job_ids: list[str], lease: float) -> list[str]:
        changed = await self._change(
            lambda tx, now: webhooks.renew(tx, owner, job_ids, lease, now),
            self._prefetch_jobs(job_ids),
        )
        return changed.value

    async def finish_delivery(self, job_id: str, owner: str, result: DeliveryResult) -> JobRecord:
        changed = await self._change(
            lambda tx, now: webhooks.finish(tx, job_id, owner, result, now),
            self._prefetch_jobs([job_id]),
        )
        return changed.value

    async def release_deliveries(self, owner: str, job_ids: list[str]) -> int:
        changed = await self._change(
            lambda tx, now: webhooks.release(tx, owner, job_ids, now),
            self._prefetch_jobs(job_ids),
        )
        return changed.value

    async def retry_delivery(self, job_id: str) -> JobRecord:
        changed = await self._change(
            lambda tx, now: webhooks.retry(tx, job_id, now), self._prefetch_jobs([job_id])
        )
        return changed.value

    async def next_delivery_due(self) -> float | None:
        return await self._view(lambda tx: tx.next_delivery_at())

    async def pending_deliveries(self) -> int:
        return await self._view(lambda tx: tx.pending_deliveries())

    def watch_deliveries(self) -> asyncio.Event:
        return self.notifier.event(webhooks.DELIVERIES_KEY)

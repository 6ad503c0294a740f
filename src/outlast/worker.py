"""Workers: claim jobs with leases, run them bounded per queue, and report how each attempt ended.

One :class:`Worker` per process serves every configured queue. For each queue a claim loop keeps
at most ``concurrency`` jobs running. Beside the jobs run two loops that never wait on a task:

- the heartbeat renews the leases of running jobs (so a CPU-bound sync task, which runs in a
  thread, never loses its lease) and learns which jobs were asked to cancel;
- maintenance returns jobs with expired leases to their queue (crashed nodes), purges terminal
  jobs past their retention, and refreshes the job gauges.

:meth:`Worker.drain` is phase 4 of shutdown: stop claiming, give running jobs ``grace`` seconds,
then stop the rest and hand them back to their queue without spending an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import socket
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from outlast.config import Settings
from outlast.errors import LeaseLost, StoreError
from outlast.executors import TaskFailure
from outlast.executors.registry import Registry
from outlast.logs import JobLog
from outlast.metrics import Metrics
from outlast.models import ErrorCode, JobRecord, JobState
from outlast.store.base import Outcome, Store
from outlast.tasks import Job

log = logging.getLogger("outlast.worker")
# One line per job transition (started, attempt ended), batched: see outlast.logs.JobLog.
job_log = JobLog()

# Leases are renewed this often (at most; a third of the lease when that is shorter). It is also
# how fast a cancel requested on another node reaches a running job.
HEARTBEAT_INTERVAL = 0.5
# An idle claim loop re-checks the store at least this often, for jobs submitted by other
# processes (submissions in this process wake it at once).
IDLE_RECHECK = 1.0
# A task this node does not know is handed back, to be claimed by a node that does, after:
UNKNOWN_TASK_DELAY = 5.0
RETENTION_SWEEP_INTERVAL = 3600.0
# Expired leases are looked for every third of a lease, but not more often than this.
MIN_MAINTENANCE_INTERVAL = 0.5
# Bounded excerpt of an exception kept in the job's error.
MAX_ERROR_MESSAGE = 2000
# Claiming ahead. A claim costs a store round trip (a group commit; a Redis round trip) between
# the end of one job and the start of the next; with 10 ms jobs that was a tenth of each slot's
# time. So while a queue's jobs are short, its worker also reserves up to `concurrency` more jobs
# while every slot is busy, and a slot that frees starts one of them at once. Reserved jobs stay
# queued in the store (not running, not counted as running) and hidden from other claims.
#
# Jobs count as short when their attempts average at most this long: beyond it a round trip is
# noise, and holding jobs back from other nodes would cost more than it saves.
RESERVE_MAX_RUN = 0.25
# ... and at least this long. Shorter jobs (no-ops) keep the worker busy with its own work: its
# slots free in bulk and each claim takes many jobs, while a reservation and a start per job
# cost more than one claim (a no-op drain ran 30 % slower with them).
RESERVE_MIN_RUN = 0.002
# A reservation not started within this long is handed back, so a busy node never sits on jobs
# that an idle one could run.
RESERVE_USE = 1.0
# The store hides a reserved job for this long (then anyone may claim it: the holder died, say).
# What it has over RESERVE_USE is the margin for clocks that differ between nodes.
RESERVE_HOLD = 5.0
# Weight of the newest attempt in a queue's average run time.
RUN_AVERAGE_WEIGHT = 0.2


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds before retry number *attempt*: exponential, capped, with jitter (0.5-1.0)."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)) * random.uniform(0.5, 1.0))


@dataclass
class _Reserved:
    record: JobRecord  # as reserved: still queued, ``run_at`` when it became due
    use_by: float  # monotonic; handed back if not started by then


@dataclass
class _Running:
    record: JobRecord
    handle: Job
    task: asyncio.Task[None] | None = None
    # A reserved job's start being written (it runs meanwhile); None once written, or when the
    # job was claimed (written before it ran).
    begun: asyncio.Future[JobRecord] | None = None
    stop_reason: str | None = None  # "cancel" | "shutdown" | "lease_lost"
    # Set once the attempt is over and its outcome is being written: stopping the job then
    # would lose an outcome that is already decided.
    finishing: bool = False
    started: float = field(default_factory=time.monotonic)


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        registry: Registry,
        metrics: Metrics,
        *,
        owner: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.metrics = metrics
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.lease = settings.jobs.lease
        self.running: dict[str, _Running] = {}
        self._active: dict[str, int] = {name: 0 for name in settings.queues}
        self._slot_freed: dict[str, asyncio.Event] = {
            name: asyncio.Event() for name in settings.queues
        }
        self._reserved: dict[str, deque[_Reserved]] = {name: deque() for name in settings.queues}
        # Average seconds per attempt, per queue (None until one ended): whether to reserve.
        self._run_average: dict[str, float | None] = {name: None for name in settings.queues}
        self._stopping = asyncio.Event()
        self._claimers: list[asyncio.Task[None]] = []
        self._background: list[asyncio.Task[None]] = []
        # Labelled metric children, looked up once: `labels()` costs more than the update.
        self._children: dict[tuple[Any, ...], Any] = {}

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        recovered = await self.store.recover_expired()
        if recovered:
            log.info("recovered %d jobs with expired leases", len(recovered))
        for queue in self.settings.queues:
            self._claimers.append(
                asyncio.create_task(self._claim_loop(queue), name=f"claim:{queue}")
            )
        self._background.append(asyncio.create_task(self._heartbeat_loop(), name="heartbeat"))
        self._background.append(asyncio.create_task(self._maintenance_loop(), name="maintenance"))
        log.info("worker %s serving queues %s", self.owner, ", ".join(self.settings.queues))

    def stop_claiming(self) -> None:
        self._stopping.set()
        for event in self._slot_freed.values():
            event.set()

    async def drain(self, grace: float) -> None:
        """Stop claiming; give running jobs *grace* seconds; hand back the rest."""
        self.stop_claiming()
        await asyncio.gather(*self._claimers, return_exceptions=True)
        tasks = [r.task for r in self.running.values() if r.task is not None]
        if tasks:
            log.info("waiting up to %.1f s for %d running jobs", grace, len(tasks))
            _, pending = (
                await asyncio.wait(tasks, timeout=grace) if grace > 0 else (set(), set(tasks))
            )
            if pending:
                log.warning("grace over: handing %d running jobs back to their queue", len(pending))
                for running in list(self.running.values()):
                    self._stop(running, "shutdown")
                await asyncio.wait(pending, timeout=10)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def cancel_local(self, job_id: str) -> bool:
        """Stop a job running in this process because its cancel was requested."""
        running = self.running.get(job_id)
        if running is None:
            return False
        self._stop(running, "cancel")
        return True

    def _stop(self, running: _Running, reason: str) -> None:
        if running.finishing:
            return
        if running.stop_reason is None:
            running.stop_reason = reason
        running.handle._mark_cancelled()
        if running.task is not None and not running.task.done():
            running.task.cancel()

    # -- claiming -------------------------------------------------------------------------

    async def _claim_loop(self, queue: str) -> None:
        try:
            await self._claim_forever(queue)
        finally:
            # Stopping (or a crash of this loop): jobs reserved and not started go back now
            # rather than when their hold ends.
            await self._unreserve(queue, list(self._reserved[queue]))
            self._reserved[queue].clear()

    async def _claim_forever(self, queue: str) -> None:
        concurrency = self.settings.queues[queue].concurrency
        slot_freed = self._slot_freed[queue]
        reserved = self._reserved[queue]
        while not self._stopping.is_set():
            # Cleared before looking at the slots: a slot freed from here on wakes the wait.
            slot_freed.clear()
            if reserved:
                await self._start_reserved(queue, concurrency)
            free = concurrency - self._active[queue]
            ahead = self._ahead(queue, concurrency) - len(reserved)
            if free <= 0 and ahead <= 0:
                # stop_claiming sets this event too. A plain wait when nothing is reserved:
                # this is the busiest wait of a worker.
                use_within = self._use_within(queue)
                if use_within is None:
                    await slot_freed.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(use_within):
                            await slot_freed.wait()
                continue
            watch = self.store.watch_queue(queue)  # before claiming: see the docstring there
            try:
                if free > 0:
                    asked = free
                    claimed = await self.store.claim_jobs(queue, self.owner, free, self.lease)
                    for record in claimed:
                        self._launch(record)
                    got = len(claimed)
                else:
                    asked = ahead
                    got = await self._reserve(queue, ahead)
            except StoreError as exc:
                log.warning("claim failed on %s: %s", queue, exc)
                await self._pause(watch, IDLE_RECHECK, slot_freed)
                continue
            if got == asked or self._stopping.is_set():
                continue
            due = await self.store.next_due(queue)
            wait = IDLE_RECHECK if due is None else min(IDLE_RECHECK, due - time.time())
            if reserved:
                wait = min(wait, self._use_within(queue) or 0.0)
            if wait > 0:
                # Reserved jobs start as soon as a slot frees; otherwise a freed slot waits for
                # a job to come (a claim now would find none).
                await self._pause(watch, wait, slot_freed if reserved else None)

    def _ahead(self, queue: str, concurrency: int) -> int:
        """How many jobs of *queue* to hold reserved: a slot's worth each while jobs are short."""
        average = self._run_average[queue]
        short = average is not None and RESERVE_MIN_RUN <= average <= RESERVE_MAX_RUN
        return concurrency if short else 0

    def _use_within(self, queue: str) -> float | None:
        """Seconds until the oldest reservation of *queue* must be handed back (None: none)."""
        reserved = self._reserved[queue]
        return max(0.0, reserved[0].use_by - time.monotonic()) if reserved else None

    async def _reserve(self, queue: str, limit: int) -> int:
        held = await self.store.reserve_jobs(queue, self.owner, limit, RESERVE_HOLD)
        use_by = time.monotonic() + RESERVE_USE
        self._reserved[queue].extend(_Reserved(record, use_by) for record in held)
        return len(held)

    async def _start_reserved(self, queue: str, concurrency: int) -> None:
        """Start reserved jobs in the free slots; hand back those kept too long."""
        reserved = self._reserved[queue]
        now = time.monotonic()
        stale: list[_Reserved] = []
        while reserved and (reserved[0].use_by <= now or self._active[queue] < concurrency):
            item = reserved.popleft()
            if item.use_by <= now or self._stopping.is_set():
                stale.append(item)
            else:
                self._launch(item.record, reserved=True)
        if stale:
            await self._unreserve(queue, stale)

    async def _unreserve(self, queue: str, items: list[_Reserved]) -> None:
        if not items:
            return
        held = [(item.record.id, item.record.run_at) for item in items]
        try:
            await self.store.unreserve_jobs(self.owner, held)
        except StoreError as exc:
            # Not lost: their hold ends within RESERVE_HOLD and any worker may claim them.
            log.warning("could not hand back %d reserved jobs of %s: %s", len(held), queue, exc)

    async def _pause(
        self, event: asyncio.Event, timeout: float | None, also: asyncio.Event | None = None
    ) -> None:
        events = (event, self._stopping) if also is None else (event, also, self._stopping)
        waits = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def _launch(self, record: JobRecord, *, reserved: bool = False) -> None:
        """Run a claimed job; or a reserved one, whose start is written while it already runs.

        A reserved job's start joins the store's writes after the end of the job whose slot it
        takes (that end was written first), so the store never holds more than `concurrency`
        running jobs of this node; until it is written, the job's output waits for it.
        """
        loop = asyncio.get_running_loop()
        begun: asyncio.Future[JobRecord] | None = None
        if reserved:
            begun = asyncio.ensure_future(self.store.start_job(record.id, self.owner, self.lease))
            record = replace(
                record,
                state=JobState.RUNNING,
                attempt=record.attempt + 1,
                started_at=time.time(),
                lease_owner=self.owner,
            )

        # The emitter refers to the future, not to `running`: a cycle through the job's handle
        # would leave every job to the garbage collector (a no-op drain then paused for 25 ms).
        async def emitter(messages: list[dict[str, Any]]) -> None:
            if begun is not None:
                await begun  # output follows the start; raises if the job never started
            await self.store.emit(record.id, self.owner, record.attempt, messages)

        handle = Job(
            id=record.id,
            task=record.task,
            queue=record.queue,
            attempt=record.attempt,
            max_attempts=record.max_attempts,
            input=record.input,
            emitter=emitter,
            loop=loop,
        )
        running = _Running(record, handle, begun=begun)
        if begun is not None:
            begun.add_done_callback(lambda future: self._begun(running, future))
        self.running[record.id] = running
        self._active[record.queue] = self._active.get(record.queue, 0) + 1
        self._child(self.metrics.worker_running, record.queue).inc()
        running.task = asyncio.create_task(self._run(running), name=f"job:{record.id}")
        waited = max(0.0, time.time() - record.run_at)
        self._child(self.metrics.job_wait_seconds, record.queue).observe(waited)
        job_log.info("job started", record.id, {"task": record.task, "attempt": record.attempt})

    def _begun(self, running: _Running, future: asyncio.Future[JobRecord]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None:
            running.begun = None  # written: the heartbeat renews its lease from now on
            return
        if isinstance(exc, LeaseLost):
            log.info(
                "reserved job %s was taken back before it started; stopping it", running.record.id
            )
        else:
            # Its start is not stored: the job stays queued, and runs again when its hold ends.
            log.warning("could not start reserved job %s: %s", running.record.id, exc)
        self._stop(running, "lease_lost")

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- running --------------------------------------------------------------------------

    async def _run(self, running: _Running) -> None:
        record = running.record
        slot_held = True
        try:
            outcome = await self._attempt(running)
            self._note_run_time(record.queue, time.monotonic() - running.started)
            running.finishing = True
            if running.begun is not None and not await self._has_begun(running):
                outcome = None
            # The attempt is over: its slot is handed on before its outcome is stored, so that
            # the next job's claim, or the start of a reserved one, joins the same group commit
            # instead of waiting for it. Both are written after the outcome: the claim loop runs
            # after this step, and a start is written by a task whose first step does too,
            # while _finish queues the outcome's write in this very step. A store writes in
            # order, so the outcome is committed no later than either: the store never holds
            # more than `concurrency` running jobs of this node.
            self._free_slot(record.queue)
            slot_held = False
            if outcome is not None:
                await self._finish(running, outcome)
        finally:
            self.running.pop(record.id, None)
            if slot_held:
                self._free_slot(record.queue)

    @staticmethod
    async def _has_begun(running: _Running) -> bool:
        """Whether a reserved job's start, written as it runs, is stored."""
        if running.begun is None:
            return True
        try:
            await running.begun
        except (LeaseLost, StoreError):
            return False  # logged by _begun; there is no attempt of ours to end
        return True

    def _note_run_time(self, queue: str, seconds: float) -> None:
        average = self._run_average.get(queue)
        self._run_average[queue] = (
            seconds if average is None else average + RUN_AVERAGE_WEIGHT * (seconds - average)
        )

    def _free_slot(self, queue: str) -> None:
        self._active[queue] -= 1
        self._child(self.metrics.worker_running, queue).dec()
        reserved = self._reserved.get(queue)
        if reserved and reserved[0].use_by > time.monotonic() and not self._stopping.is_set():
            # The next job starts now, not after the claim loop's turn (which comes after the
            # store's next group commit).
            self._launch(reserved.popleft().record, reserved=True)
        slot = self._slot_freed.get(queue)
        if slot is not None:
            slot.set()  # the claim loop tops up its reservations, or claims

    async def _attempt(self, running: _Running) -> Outcome | None:
        record = running.record
        spec = self.registry.get(record.task)
        if spec is None:
            log.warning(
                "task %r is not registered on this node; handing job %s back",
                record.task,
                record.id,
            )
            return Outcome("release", retry_at=time.time() + UNKNOWN_TASK_DELAY)
        try:
            async with asyncio.timeout(record.timeout):
                result = await spec.run(running.handle, record.input)
        except asyncio.CancelledError:
            if running.stop_reason is None:
                raise  # not ours to handle (the event loop is going away)
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return self._stopped(running)
        except TimeoutError:
            running.handle._mark_cancelled()
            return self._failed(
                record,
                ErrorCode.TIMEOUT,
                f"attempt exceeded its {record.timeout:g} s timeout",
                True,
            )
        except Exception as exc:
            # A task that fails while being stopped (say, its cleanup raises) was stopped all
            # the same: a cancel stays a cancel and a shutdown does not spend the attempt.
            if running.stop_reason is not None:
                return self._stopped(running)
            if isinstance(exc, TaskFailure):
                return self._failure(record, exc.error(), exc.retryable)
            return self._exception(record, exc)
        try:
            # The result must be JSON (and JSON has no NaN): fail the attempt now if it is not.
            json.dumps(result, allow_nan=False)
        except (TypeError, ValueError) as exc:
            return self._failed(record, ErrorCode.EXCEPTION, f"result is not JSON: {exc}", False)
        return Outcome("succeeded", result=result)

    @staticmethod
    def _stopped(running: _Running) -> Outcome | None:
        """The outcome of an attempt stopped by this worker, by the reason it was stopped."""
        if running.stop_reason == "cancel":
            return Outcome("cancelled")
        if running.stop_reason == "shutdown":
            return Outcome("release")  # handed back: the attempt does not count
        return None  # lease lost: the job moved on without us; nothing to report

    def _exception(self, record: JobRecord, exc: Exception) -> Outcome:
        message = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_MESSAGE]
        job_log.info("job attempt raised", record.id, {"error": message})
        return self._failed(record, ErrorCode.EXCEPTION, message, True)

    def _failed(self, record: JobRecord, code: ErrorCode, message: str, retryable: bool) -> Outcome:
        return self._failure(record, {"code": code.value, "message": message}, retryable)

    def _failure(self, record: JobRecord, error: dict[str, Any], retryable: bool) -> Outcome:
        retry_at = None
        if retryable and record.attempt < record.max_attempts:
            jobs = self.settings.jobs
            retry_at = time.time() + backoff(record.attempt, jobs.backoff_base, jobs.backoff_max)
        return Outcome("failed", error=error, retry_at=retry_at)

    async def _finish(self, running: _Running, outcome: Outcome) -> None:
        record = running.record
        try:
            done = await self.store.finish_job(record.id, self.owner, record.attempt, outcome)
        except LeaseLost:
            log.warning("lost the lease of job %s before it finished", record.id)
            return
        except StoreError as exc:
            # The outcome is not stored; the lease will expire and the job run again (at least
            # once, never lost).
            log.error("could not store the end of job %s: %s", record.id, exc)
            return
        elapsed = time.monotonic() - running.started
        metrics = self.metrics
        self._child(metrics.job_attempts, record.queue, record.task, outcome.kind).inc()
        self._child(metrics.job_run_seconds, record.queue, record.task).observe(elapsed)
        if done.state.terminal and done.finished_at is not None:
            self._child(metrics.job_seconds, record.queue, record.task, done.state.value).observe(
                max(0.0, done.finished_at - done.created_at)
            )
        job_log.info(
            "job attempt ended",
            record.id,
            {
                "task": record.task,
                "attempt": record.attempt,
                "outcome": outcome.kind,
                "state": done.state.value,
                "seconds": round(elapsed, 4),
            },
        )

    # -- background loops -----------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = min(HEARTBEAT_INTERVAL, self.lease / 3)
        while True:
            await asyncio.sleep(interval)
            # Not reserved jobs whose start is still being written: that write comes first.
            ids = [job_id for job_id, r in self.running.items() if r.begun is None]
            if not ids:
                continue
            try:
                owned, cancel = await self.store.renew_leases(self.owner, ids, self.lease)
            except StoreError as exc:
                log.warning("lease renewal failed: %s", exc)
                continue
            for job_id in set(ids) - set(owned):
                running = self.running.get(job_id)
                # A job whose outcome is being written is not lost: that write ended its lease.
                if running is None or running.finishing:
                    continue
                if running.task is not None and not running.task.done():
                    log.warning("job %s: lease lost, stopping it here", job_id)
                    self._stop(running, "lease_lost")
            for job_id in cancel:
                self.cancel_local(job_id)

    async def _maintenance_loop(self) -> None:
        recover_every = max(MIN_MAINTENANCE_INTERVAL, min(self.lease / 3, 10.0))
        retention = self.settings.jobs.retention_days * 86400
        # A short retention (tests, small disks) is swept often enough to be honoured.
        purge_every = min(RETENTION_SWEEP_INTERVAL, max(MIN_MAINTENANCE_INTERVAL, retention / 10))
        next_recover = next_purge = time.monotonic()  # both at start, then on their schedules
        while True:
            now = time.monotonic()
            try:
                if now >= next_recover:
                    next_recover = now + recover_every
                    recovered = await self.store.recover_expired()
                    if recovered:
                        log.info("recovered %d jobs with expired leases", len(recovered))
                if now >= next_purge:
                    next_purge = now + purge_every
                    purged = await self.store.purge_jobs(time.time() - retention)
                    if purged:
                        log.info("retention: removed %d finished jobs", purged)
            except StoreError as exc:
                log.warning("maintenance failed: %s", exc)
            await asyncio.sleep(max(0.0, min(next_recover, next_purge) - time.monotonic()))

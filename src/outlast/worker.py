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
import json
import logging
import os
import random
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from outlast.config import Settings
from outlast.errors import LeaseLost, StoreError
from outlast.executors import TaskFailure
from outlast.executors.registry import Registry
from outlast.logs import JobLog
from outlast.metrics import Metrics
from outlast.models import ErrorCode, JobRecord
from outlast.store.base import Store
from outlast.store.jobs_logic import Outcome
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


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds before retry number *attempt*: exponential, capped, with jitter (0.5-1.0)."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)) * random.uniform(0.5, 1.0))


@dataclass
class _Running:
    record: JobRecord
    handle: Job
    task: asyncio.Task[None] | None = None
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
        concurrency = self.settings.queues[queue].concurrency
        slot_freed = self._slot_freed[queue]
        while not self._stopping.is_set():
            free = concurrency - self._active[queue]
            if free <= 0:
                slot_freed.clear()
                await slot_freed.wait()
                continue
            watch = self.store.watch_queue(queue)  # before claiming: see the docstring there
            try:
                claimed = await self.store.claim_jobs(queue, self.owner, free, self.lease)
            except StoreError as exc:
                log.warning("claim failed on %s: %s", queue, exc)
                await self._pause(watch, IDLE_RECHECK)
                continue
            for record in claimed:
                self._launch(record)
            if len(claimed) == free or self._stopping.is_set():
                continue
            due = await self.store.next_due(queue)
            wait = IDLE_RECHECK if due is None else min(IDLE_RECHECK, due - time.time())
            if wait > 0:
                await self._pause(watch, wait)

    async def _pause(self, event: asyncio.Event, timeout: float) -> None:
        waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._stopping.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def _launch(self, record: JobRecord) -> None:
        loop = asyncio.get_running_loop()

        async def emitter(messages: list[dict[str, Any]]) -> None:
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
        running = _Running(record, handle)
        self.running[record.id] = running
        self._active[record.queue] = self._active.get(record.queue, 0) + 1
        self._child(self.metrics.worker_running, record.queue).inc()
        running.task = asyncio.create_task(self._run(running), name=f"job:{record.id}")
        waited = max(0.0, time.time() - record.run_at)
        self._child(self.metrics.job_wait_seconds, record.queue).observe(waited)
        job_log.info("job started", record.id, {"task": record.task, "attempt": record.attempt})

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
            running.finishing = True
            # The attempt is over: its slot is handed on before its outcome is stored, so that
            # the claim of the next job joins the same group commit instead of waiting for it.
            # A store writes in order, so the outcome is committed no later than that claim:
            # the store never holds more than `concurrency` running jobs of this node.
            self._free_slot(record.queue)
            slot_held = False
            if outcome is not None:
                await self._finish(running, outcome)
        finally:
            self.running.pop(record.id, None)
            if slot_held:
                self._free_slot(record.queue)

    def _free_slot(self, queue: str) -> None:
        self._active[queue] -= 1
        self._child(self.metrics.worker_running, queue).dec()
        slot = self._slot_freed.get(queue)
        if slot is not None:
            slot.set()  # the claim loop runs before the store's next group is written

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
            ids = list(self.running)
            if not ids:
                continue
            try:
                owned, cancel = await self.store.renew_leases(self.owner, ids, self.lease)
            except StoreError as exc:
                log.warning("lease renewal failed: %s", exc)
                continue
            for job_id in set(ids) - set(owned):
                running = self.running.get(job_id)
                if running is not None and running.task is not None and not running.task.done():
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

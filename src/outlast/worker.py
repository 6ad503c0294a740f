"""Workers: claim jobs with leases, run them bounded per queue, and report how each attempt ended.

One :class:`Worker` per process serves every configured queue, with one
:class:`~outlast.queue_runner.QueueRunner` per queue (its slots, reservations and claim loop).
The worker runs the jobs they take and, beside them, two loops that never wait on a task:

- the heartbeat renews the leases of running jobs (so a CPU-bound sync task, which runs in a
  thread, never loses its lease) and learns which jobs were asked to cancel;
- maintenance returns jobs with expired leases to their queue (crashed nodes), purges terminal
  jobs past their retention, and refreshes the job gauges.

Every loop that talks to the store backs off while it fails and reports to the process's
:class:`~outlast.health.StoreHealth` (which ``/readyz`` reads).

:meth:`Worker.drain` is phase 4 of shutdown: stop claiming, give running jobs ``grace`` seconds,
then stop the rest and hand them back to their queue without spending an attempt.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from outlast.config import Settings
from outlast.errors import LeaseLost, StoreError
from outlast.executors import TaskFailure, TaskWait
from outlast.executors.registry import Registry
from outlast.health import Retry, StoreHealth, backoff
from outlast.logs import JobLog
from outlast.metrics import Metrics
from outlast.models import ErrorCode, JobRecord, JobState
from outlast.queue_runner import QueueRunner
from outlast.store.base import Outcome, Store
from outlast.tasks import Job

__all__ = ["StopReason", "Worker", "backoff"]

log = logging.getLogger("outlast.worker")
# One line per job transition (started, attempt ended), batched: see outlast.logs.JobLog.
job_log = JobLog()

# Leases are renewed this often (at most; a third of the lease when that is shorter). It is also
# how fast a cancel requested on another node reaches a running job.
HEARTBEAT_INTERVAL = 0.5
# A task this node does not know is handed back, to be claimed by a node that does, after:
UNKNOWN_TASK_DELAY = 5.0
RETENTION_SWEEP_INTERVAL = 3600.0
# Expired leases are looked for every third of a lease, but not more often than this.
MIN_MAINTENANCE_INTERVAL = 0.5
# Bounded excerpt of an exception kept in the job's error.
MAX_ERROR_MESSAGE = 2000

# Why this worker stopped a running job: its cancel was requested; the process is shutting down
# (the job is handed back without spending an attempt); or its lease was lost (the job moved on
# without us: there is nothing to report).
StopReason = Literal["cancel", "shutdown", "lease_lost"]


@dataclass(slots=True)
class _Running:
    record: JobRecord
    handle: Job
    # Set when the job is stopped: what the task reads as ``job.cancelled``.
    cancelled: threading.Event
    task: asyncio.Task[None] | None = None
    # A reserved job's start being written (it runs meanwhile); None once written, or when the
    # job was claimed (written before it ran).
    begun: asyncio.Future[JobRecord] | None = None
    stop_reason: StopReason | None = None
    # Set by the job's task at its first step. A task cancelled before that never runs its
    # body (nor its `finally`), so a stop that comes first is left for the task to read.
    entered: bool = False
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
        health: StoreHealth | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.metrics = metrics
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.lease = settings.jobs.lease
        self.health = health or StoreHealth()
        self.running: dict[str, _Running] = {}
        self._stopping = asyncio.Event()
        self.runners = {
            name: QueueRunner(
                name,
                queue.concurrency,
                store=store,
                owner=self.owner,
                lease=self.lease,
                launch=self._launch,
                stopping=self._stopping,
                health=self.health,
                per_key=queue.per_key_concurrency,
            )
            for name, queue in settings.queues.items()
        }
        self._claimers: list[asyncio.Task[None]] = []
        self._background: list[asyncio.Task[None]] = []
        # Labelled metric children, looked up once: `labels()` costs more than the update.
        self._children: dict[tuple[Any, ...], Any] = {}

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        recovered = await self.store.recover_expired()
        if recovered:
            log.info("recovered %d jobs with expired leases", len(recovered))
        for name, runner in self.runners.items():
            self._claimers.append(asyncio.create_task(runner.run(), name=f"claim:{name}"))
        self._background.append(asyncio.create_task(self._heartbeat_loop(), name="heartbeat"))
        self._background.append(asyncio.create_task(self._maintenance_loop(), name="maintenance"))
        log.info("worker %s serving queues %s", self.owner, ", ".join(self.settings.queues))

    def stop_claiming(self) -> None:
        self._stopping.set()
        for runner in self.runners.values():
            runner.wake()

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

    def _stop(self, running: _Running, reason: StopReason) -> None:
        if running.finishing:
            return
        if running.stop_reason is None:
            running.stop_reason = reason
        running.cancelled.set()
        if running.entered and running.task is not None and not running.task.done():
            running.task.cancel()

    # -- starting jobs ----------------------------------------------------------------------

    def _launch(self, record: JobRecord, reserved: bool) -> None:
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
        # would leave every job to the garbage collector, whose full passes stall every job.
        async def emitter(messages: list[dict[str, Any]]) -> None:
            if begun is not None:
                await begun  # output follows the start; raises if the job never started
            await self.store.emit(record.id, self.owner, record.attempt, messages)

        cancelled = threading.Event()
        handle = Job(
            id=record.id,
            task=record.task,
            queue=record.queue,
            attempt=record.attempt,
            max_attempts=record.max_attempts,
            input=record.input,
            emitter=emitter,
            loop=loop,
            cancelled=cancelled,
        )
        running = _Running(record, handle, cancelled, begun=begun)
        if begun is not None:
            begun.add_done_callback(lambda future: self._begun(running, future))
        self.running[record.id] = running
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
        running.entered = True
        record = running.record
        slot_held = True
        try:
            outcome = await self._attempt(running)
            self.runners[record.queue].note_run_time(time.monotonic() - running.started)
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

    def _free_slot(self, queue: str) -> None:
        self._child(self.metrics.worker_running, queue).dec()
        self.runners[queue].slot_freed()

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
        if running.stop_reason is not None:
            return self._stopped(running)  # stopped before it began
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
            running.cancelled.set()
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
            if isinstance(exc, TaskWait):
                return self._wait(record, exc)
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

    def _wait(self, record: JobRecord, wait: TaskWait) -> Outcome:
        """Back to the queue until the upstream allows it, within rate_limit_wait_max in all;
        past that the attempt fails as the upstream answered."""
        now = time.time()
        if record.waited + max(0.0, wait.until - now) > self.settings.jobs.rate_limit_wait_max:
            failure = wait.failure
            return self._failure(record, failure.error(), failure.retryable)
        upstream = record.input.get("upstream") if isinstance(record.input, dict) else None
        self._child(self.metrics.upstream_waits, str(upstream or "url"), wait.reason).inc()
        waiting = {"reason": wait.reason, "until": wait.until}
        return Outcome("release", retry_at=wait.until, waiting=waiting)

    def _exception(self, record: JobRecord, exc: Exception) -> Outcome:
        message = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_MESSAGE]
        job_log.info("job attempt raised", record.id, {"error": message})
        return self._failed(record, ErrorCode.EXCEPTION, message, True)

    def _failed(self, record: JobRecord, code: ErrorCode, message: str, retryable: bool) -> Outcome:
        return self._failure(record, {"code": code.value, "message": message}, retryable)

    def _failure(self, record: JobRecord, error: dict[str, Any], retryable: bool) -> Outcome:
        retry_in = None
        if retryable and record.attempt < record.max_attempts:
            jobs = self.settings.jobs
            retry_in = backoff(record.attempt, jobs.backoff_base, jobs.backoff_max)
        return Outcome("failed", error=error, retry_in=retry_in)

    def _count_tokens(self, record: JobRecord, result: Any) -> None:
        """A relay's reported usage, counted by upstream and model."""
        usage = result.get("usage") if isinstance(result, dict) else None
        if not isinstance(usage, dict):
            return
        value = record.input if isinstance(record.input, dict) else {}
        body = value.get("body")
        model = body.get("model") if isinstance(body, dict) else None
        upstream = str(value.get("upstream") or "url")
        model_label = str(model) if isinstance(model, str) else ""
        for kind in ("prompt", "completion"):
            count = usage.get(f"{kind}_tokens")
            if isinstance(count, int) and count > 0:
                self._child(self.metrics.relay_tokens, upstream, model_label, kind).inc(count)

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
        if record.task == "relay" and outcome.kind == "succeeded":
            self._count_tokens(record, outcome.result)
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
        retry = Retry()
        wait = interval
        while True:
            await asyncio.sleep(wait)
            wait = interval
            # Not reserved jobs whose start is still being written: that write comes first.
            ids = [job_id for job_id, r in self.running.items() if r.begun is None]
            if not ids:
                continue
            try:
                owned, cancel = await self.store.renew_leases(self.owner, ids, self.lease)
            except StoreError as exc:
                self.health.failed("lease renewal", exc)
                wait = max(interval, retry.failed())
                continue
            retry.succeeded()
            self.health.succeeded("lease renewal")
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
        retry = Retry()
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
                self.health.failed("maintenance", exc)
                # Each step runs again on its schedule, or later while the store keeps failing.
                later = time.monotonic() + retry.failed()
                next_recover, next_purge = max(next_recover, later), max(next_purge, later)
            else:
                retry.succeeded()
                self.health.succeeded("maintenance")
            await asyncio.sleep(max(0.0, min(next_recover, next_purge) - time.monotonic()))

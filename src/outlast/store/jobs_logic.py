"""The job rules, written once over a transaction (:class:`JobTx`), like the stream rules.

Every change of a job and the messages it writes to its stream (``jobs/<id>``) happen in one
transaction, so the stream never says something the job table does not, and a crash between
the two cannot happen. State changes go through :func:`_transition`, which enforces
:data:`outlast.models.TRANSITIONS`.
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass, replace
from typing import Any

from outlast.errors import Conflict, LeaseLost, NotFound, QueueFull
from outlast.models import (
    ErrorCode,
    JobRecord,
    JobState,
    NewJob,
    can_transition,
    new_job_id,
    state_message,
)
from outlast.store import streams_logic as streams
from outlast.store.base import AppendSpec, CreateSpec

JSON = "application/json"
QUEUE_PREFIX = "\0queue:"  # notifier key for "a job became claimable in this queue"


def queue_key(queue: str) -> str:
    return QUEUE_PREFIX + queue


@dataclass(frozen=True, slots=True)
class SubmitResult:
    job: JobRecord
    created: bool


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended, as the worker reports it."""

    kind: str  # "succeeded" | "failed" | "cancelled" | "release"
    result: Any = None
    error: dict[str, Any] | None = None
    retry_at: float | None = None  # failed with attempts left: when to try again


class JobTx(streams.Tx):
    @abc.abstractmethod
    def insert_job(self, job: JobRecord) -> None: ...
    @abc.abstractmethod
    def get_job(self, job_id: str) -> JobRecord | None: ...
    @abc.abstractmethod
    def update_job(self, job_id: str, **fields: Any) -> None: ...
    @abc.abstractmethod
    def find_job_by_key(self, key: str) -> JobRecord | None: ...
    @abc.abstractmethod
    def count_waiting(self, queue: str) -> int: ...
    @abc.abstractmethod
    def move_count(self, queue: str, old: JobState | None, new: JobState | None) -> None:
        """Keep per-(queue, state) counts: admission reads them on every submit."""

    @abc.abstractmethod
    def claimable(self, queue: str, now: float, limit: int) -> list[JobRecord]: ...
    @abc.abstractmethod
    def expired_leases(self, now: float) -> list[JobRecord]: ...
    @abc.abstractmethod
    def finished_before(self, ts: float, limit: int) -> list[str]: ...
    @abc.abstractmethod
    def delete_job(self, job_id: str) -> None: ...


# -- stream helpers -------------------------------------------------------------------------


def _message(message: dict[str, Any]) -> tuple[bytes, int]:
    # allow_nan=False: NaN is not JSON, and a stream holding it could not be read back by
    # clients. A task that emits one gets a ValueError, like any value that is not JSON.
    data = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return data.encode(), 1


def _emit(
    tx: JobTx, job: JobRecord, message: dict[str, Any], now: float, *, close: bool = False
) -> None:
    streams.append(tx, job.stream, AppendSpec(JSON, _message(message), close=close), now)


def _transition(tx: JobTx, job: JobRecord, new: JobState, now: float, **fields: Any) -> JobRecord:
    if not can_transition(job.state, new):
        raise Conflict(f"job {job.id} cannot go from {job.state} to {new}", code="invalid_state")
    tx.update_job(job.id, state=new, **fields)
    if new != job.state:
        tx.move_count(job.queue, job.state, new)
    return replace(job, state=new, **fields)


# -- submit ---------------------------------------------------------------------------------


def _same_request(job: JobRecord, new: NewJob) -> bool:
    def canon(value: Any) -> str:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))

    return job.task == new.task and canon(job.input) == canon(new.input)


def submit(tx: JobTx, new: NewJob, capacity: int, now: float) -> streams.Changed:
    if new.key is not None:
        existing = tx.find_job_by_key(new.key)
        if existing is not None:
            if not _same_request(existing, new):
                raise Conflict(
                    "this idempotency key was used with a different task or input",
                    code="idempotency_conflict",
                )
            return streams.Changed(SubmitResult(existing, created=False), ())
    if tx.count_waiting(new.queue) >= capacity:
        raise QueueFull(new.queue, capacity)
    job = JobRecord(
        id=new_job_id(now),
        task=new.task,
        queue=new.queue,
        state=JobState.QUEUED,
        input=new.input,
        attempt=0,
        max_attempts=new.max_attempts,
        timeout=new.timeout,
        created_at=now,
        run_at=now + new.delay,
        key=new.key,
    )
    tx.insert_job(job)
    tx.move_count(job.queue, None, JobState.QUEUED)
    streams.create(tx, job.stream, CreateSpec(content_type=JSON), now)
    _emit(tx, job, state_message(JobState.QUEUED, 0), now)
    return streams.Changed(SubmitResult(job, created=True), (job.stream, queue_key(job.queue)))


# -- claim, heartbeat, emit -----------------------------------------------------------------


def claim(
    tx: JobTx, queue: str, owner: str, limit: int, lease: float, now: float
) -> streams.Changed:
    claimed = []
    for job in tx.claimable(queue, now, limit):
        attempt = job.attempt + 1
        running = _transition(
            tx,
            job,
            JobState.RUNNING,
            now,
            attempt=attempt,
            started_at=now,
            lease_owner=owner,
            lease_expires=now + lease,
        )
        _emit(tx, running, state_message(JobState.RUNNING, attempt), now)
        claimed.append(running)
    return streams.Changed(claimed, tuple(job.stream for job in claimed))


def renew(tx: JobTx, owner: str, job_ids: list[str], lease: float, now: float) -> streams.Changed:
    """Extend the leases *owner* still holds. Returns (ids still owned, ids asked to cancel)."""
    owned: list[str] = []
    cancel: list[str] = []
    for job_id in job_ids:
        job = tx.get_job(job_id)
        if job is None or job.state != JobState.RUNNING or job.lease_owner != owner:
            continue
        tx.update_job(job_id, lease_expires=now + lease)
        owned.append(job_id)
        if job.cancel_requested:
            cancel.append(job_id)
    return streams.Changed((owned, cancel), ())


def _owned(tx: JobTx, job_id: str, owner: str, attempt: int) -> JobRecord:
    job = tx.get_job(job_id)
    if job is None or job.state != JobState.RUNNING or job.lease_owner != owner:
        raise LeaseLost(job_id)
    if job.attempt != attempt:
        raise LeaseLost(job_id)
    return job


def emit(
    tx: JobTx, job_id: str, owner: str, attempt: int, messages: list[dict[str, Any]], now: float
) -> streams.Changed:
    job = _owned(tx, job_id, owner, attempt)
    for message in messages:
        _emit(tx, job, message, now)
    return streams.Changed(None, (job.stream,))


# -- the end of an attempt ------------------------------------------------------------------


def finish(
    tx: JobTx, job_id: str, owner: str, attempt: int, outcome: Outcome, now: float
) -> streams.Changed:
    job = _owned(tx, job_id, owner, attempt)
    names: tuple[str, ...] = (job.stream,)
    released = {"lease_owner": None, "lease_expires": None}
    if outcome.kind == "succeeded":
        done = _transition(
            tx, job, JobState.SUCCEEDED, now, result=outcome.result, finished_at=now, **released
        )
        _emit(tx, done, {"type": "result", "result": outcome.result}, now)
        _emit(tx, done, state_message(JobState.SUCCEEDED, attempt), now, close=True)
    elif outcome.kind == "failed":
        assert outcome.error is not None
        _emit(tx, job, {"type": "error", "attempt": attempt, "error": outcome.error}, now)
        if outcome.retry_at is not None and attempt < job.max_attempts:
            done = _transition(
                tx,
                job,
                JobState.QUEUED,
                now,
                error=outcome.error,
                run_at=outcome.retry_at,
                **released,
            )
            retry_in = round(max(0.0, outcome.retry_at - now), 3)
            _emit(tx, done, state_message(JobState.QUEUED, attempt, retry_in=retry_in), now)
            names += (queue_key(job.queue),)
        else:
            done = _transition(
                tx, job, JobState.FAILED, now, error=outcome.error, finished_at=now, **released
            )
            _emit(tx, done, state_message(JobState.FAILED, attempt), now, close=True)
    elif outcome.kind == "cancelled":
        done = _cancel_now(tx, job, now)
    elif outcome.kind == "release":
        # Handed back (shutdown, or a node that lacks the task): the attempt does not count.
        run_at = outcome.retry_at if outcome.retry_at is not None else now
        done = _transition(
            tx, job, JobState.QUEUED, now, attempt=attempt - 1, run_at=run_at, **released
        )
        _emit(tx, done, state_message(JobState.QUEUED, attempt - 1, reason="handed_back"), now)
        names += (queue_key(job.queue),)
    else:  # pragma: no cover - a programming error
        raise ValueError(outcome.kind)
    return streams.Changed(done, names)


def _cancel_now(tx: JobTx, job: JobRecord, now: float) -> JobRecord:
    error = {"code": ErrorCode.CANCELLED.value, "message": "cancelled on request"}
    done = _transition(
        tx,
        job,
        JobState.CANCELLED,
        now,
        error=error,
        finished_at=now,
        lease_owner=None,
        lease_expires=None,
    )
    _emit(tx, done, state_message(JobState.CANCELLED, job.attempt), now, close=True)
    return done


def cancel(tx: JobTx, job_id: str, now: float) -> streams.Changed:
    """Queued: cancelled at once. Running: flagged; its worker stops it. Terminal: as it is."""
    job = tx.get_job(job_id)
    if job is None:
        raise NotFound(f"job not found: {job_id}")
    if job.state.terminal:
        return streams.Changed(job, ())
    if job.state == JobState.QUEUED:
        return streams.Changed(_cancel_now(tx, job, now), (job.stream,))
    if not job.cancel_requested:
        tx.update_job(job_id, cancel_requested=True)
        job = replace(job, cancel_requested=True)
    return streams.Changed(job, (job.stream,))


# -- recovery and retention -----------------------------------------------------------------


def recover_expired(tx: JobTx, now: float) -> streams.Changed:
    """Jobs whose worker vanished (lease expired) go back to their queue, or fail if spent."""
    names: list[str] = []
    recovered: list[JobRecord] = []
    for job in tx.expired_leases(now):
        if job.cancel_requested:
            done = _cancel_now(tx, job, now)
        elif job.attempt < job.max_attempts:
            done = _transition(
                tx, job, JobState.QUEUED, now, run_at=now, lease_owner=None, lease_expires=None
            )
            _emit(
                tx, done, state_message(JobState.QUEUED, job.attempt, reason="lease_expired"), now
            )
            names.append(queue_key(job.queue))
        else:
            error = {
                "code": ErrorCode.LEASE_LOST.value,
                "message": "the worker running the last attempt stopped renewing its lease",
            }
            done = _transition(
                tx,
                job,
                JobState.FAILED,
                now,
                error=error,
                finished_at=now,
                lease_owner=None,
                lease_expires=None,
            )
            _emit(tx, done, {"type": "error", "attempt": job.attempt, "error": error}, now)
            _emit(tx, done, state_message(JobState.FAILED, job.attempt), now, close=True)
        names.append(job.stream)
        recovered.append(done)
    return streams.Changed(recovered, tuple(names))


def purge(tx: JobTx, before: float, limit: int, now: float) -> streams.Changed:
    """Remove terminal jobs finished before *before*, with their streams."""
    removed = tx.finished_before(before, limit)
    for job_id in removed:
        job = tx.get_job(job_id)
        if job is None:
            continue
        tx.delete_job(job_id)
        tx.move_count(job.queue, job.state, None)
        row = tx.get_stream(f"jobs/{job_id}")
        if row is not None:
            streams.delete(tx, row.name, now)
    return streams.Changed(len(removed), ())

"""The job rules, written once over a transaction (:class:`JobTx`), like the stream rules.

Every change of a job and the messages it writes to its stream (``jobs/<id>``) happen in one
transaction, so the stream never says something the job table does not, and a crash between
the two cannot happen. State changes go through :func:`_transition`, which enforces
:data:`outlast.models.TRANSITIONS`.
"""

from __future__ import annotations

import abc
import json
from dataclasses import replace
from typing import Any

from outlast.errors import Conflict, Gone, LeaseLost, NotFound, QueueFull
from outlast.models import (
    ErrorCode,
    JobRecord,
    JobState,
    NewJob,
    can_transition,
    evolve_job,
    job_stream_name,
    new_job_id,
    state_message,
)
from outlast.store import streams_logic as streams
from outlast.store.base import CreateSpec, Outcome, SubmitResult, Unit
from outlast.store.streams_logic import Changed

JSON = "application/json"
# A message for a job's stream: a dict, or already encoded (see _state).
Message = dict[str, Any] | bytes
QUEUE_PREFIX = "\0queue:"  # notifier key for "a job became claimable in this queue"


def queue_key(queue: str) -> str:
    return QUEUE_PREFIX + queue


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
    def move_count(
        self, queue: str, old: JobState | None, new: JobState | None, n: int = 1
    ) -> None:
        """Keep per-(queue, state) counts: admission reads them on every submit. Moves *n*
        jobs from *old* to *new* (``None``: from or to nowhere)."""

    @abc.abstractmethod
    def claimable(self, queue: str, now: float, limit: int) -> list[JobRecord]: ...
    @abc.abstractmethod
    def expired_leases(self, now: float) -> list[JobRecord]: ...
    @abc.abstractmethod
    def finished_before(self, ts: float, limit: int) -> list[str]: ...
    @abc.abstractmethod
    def delete_job(self, job_id: str) -> None: ...


# -- stream helpers -------------------------------------------------------------------------


def _encode(message: Message) -> bytes:
    if isinstance(message, bytes):
        return message
    # allow_nan=False: NaN is not JSON, and a stream holding it could not be read back by
    # clients. A task that emits one gets a ValueError, like any value that is not JSON.
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _state(state: JobState, attempt: int) -> bytes:
    """``state_message(state, attempt)`` as _encode writes it (the same bytes), without
    json.dumps: every job writes a few of these."""
    return f'{{"type":"state","state":"{state.value}","attempt":{int(attempt)}}}'.encode()


def _emit(tx: JobTx, job: JobRecord, now: float, *messages: Message, close: bool = False) -> None:
    """Append *messages* to the job's stream, each one a unit of its own (each has its own
    offset, which SSE ids resume from), and close the stream after them when *close*.

    The same as one stream append per message, with one read and one write of the stream's
    row: job streams are written only here (the streams API refuses writes under ``jobs/``),
    are JSON and never expire, so the rest of what an append checks holds already.
    """
    if not messages:
        return
    row = tx.get_stream(job.stream)
    if row is None or row.expired(now):
        raise NotFound(f"stream not found: {job.stream}")
    if row.deleted:
        raise Gone(f"stream was deleted: {job.stream}")
    if row.closed:
        raise Conflict("stream is closed", code="stream_closed")
    tail = row.tail
    for message in messages:
        data = _encode(message)
        tx.insert_unit(row.id, Unit(tail, tail + len(data), 1, data))
        tail += len(data)
    if close:
        tx.update_stream(row.id, touched_at=now, tail=tail, closed=True)
    else:
        tx.update_stream(row.id, touched_at=now, tail=tail)


def _set_state(tx: JobTx, job: JobRecord, new: JobState, fields: dict[str, Any]) -> JobRecord:
    """Change the job's state and fields, without counting it (see _transition)."""
    if not can_transition(job.state, new):
        raise Conflict(f"job {job.id} cannot go from {job.state} to {new}", code="invalid_state")
    tx.update_job(job.id, state=new, **fields)
    return evolve_job(job, {"state": new, **fields})


def _transition(tx: JobTx, job: JobRecord, new: JobState, now: float, **fields: Any) -> JobRecord:
    done = _set_state(tx, job, new, fields)
    if new != job.state:
        tx.move_count(job.queue, job.state, new)
    return done


# -- submit ---------------------------------------------------------------------------------


def _same_request(job: JobRecord, new: NewJob) -> bool:
    def canon(value: Any) -> str:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))

    return job.task == new.task and canon(job.input) == canon(new.input)


def submit(tx: JobTx, new: NewJob, capacity: int, now: float) -> Changed[SubmitResult]:
    if new.key is not None:
        existing = tx.find_job_by_key(new.key)
        if existing is not None:
            if not _same_request(existing, new):
                raise Conflict(
                    "this idempotency key was used with a different task or input",
                    code="idempotency_conflict",
                )
            return Changed(SubmitResult(existing, created=False), ())
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
    # The stream is created with its first message, as a stream created then appended to.
    first = _state(JobState.QUEUED, 0)
    streams.create(tx, job.stream, CreateSpec(content_type=JSON, units=[(first, 1)]), now)
    return Changed(SubmitResult(job, created=True), (job.stream, queue_key(job.queue)))


# -- claim, heartbeat, emit -----------------------------------------------------------------


def _begin(tx: JobTx, job: JobRecord, owner: str, lease: float, now: float) -> JobRecord:
    """A queued job's next attempt starts under *owner*'s lease (not counted: see callers)."""
    attempt = job.attempt + 1
    fields = {
        "attempt": attempt,
        "started_at": now,
        "lease_owner": owner,
        "lease_expires": now + lease,
    }
    running = _set_state(tx, job, JobState.RUNNING, fields)
    _emit(tx, running, now, _state(JobState.RUNNING, attempt))
    return running


def claim(
    tx: JobTx, queue: str, owner: str, limit: int, lease: float, now: float
) -> Changed[list[JobRecord]]:
    claimed = [_begin(tx, job, owner, lease, now) for job in tx.claimable(queue, now, limit)]
    if claimed:  # every claimable job is queued in this queue: counted at once
        tx.move_count(queue, JobState.QUEUED, JobState.RUNNING, len(claimed))
    return Changed(claimed, tuple(job.stream for job in claimed))


# -- reservations: claimed ahead, started later ---------------------------------------------
#
# A worker that runs short jobs reserves the next ones while its slots are busy, so that a slot
# that frees starts one at once instead of waiting for a claim's round trip. A reserved job is
# still queued (it is not running and is not counted as running); it is hidden from every
# claim until ``run_at``, which is set to the end of the hold. When the hold ends (the worker
# died, say) it is claimable again, with no attempt spent. ``lease_owner`` names the holder.


def reserve(
    tx: JobTx, queue: str, owner: str, limit: int, hold: float, now: float
) -> Changed[list[JobRecord]]:
    """Hold up to *limit* due jobs of *queue* for *owner* for *hold* seconds. Returns them as
    they were (``run_at`` is still when they became due)."""
    held = tx.claimable(queue, now, limit)
    for job in held:
        tx.update_job(job.id, run_at=now + hold, lease_owner=owner, lease_expires=now + hold)
    return Changed(held, ())


def _held(tx: JobTx, job_id: str, owner: str) -> JobRecord | None:
    job = tx.get_job(job_id)
    if job is None or job.state != JobState.QUEUED or job.lease_owner != owner:
        return None
    return job


def start(tx: JobTx, job_id: str, owner: str, lease: float, now: float) -> Changed[JobRecord]:
    """A job *owner* reserved starts its attempt (``LeaseLost`` if it is no longer held: it
    was cancelled, or its hold ended and another worker took it)."""
    job = _held(tx, job_id, owner)
    if job is None:
        raise LeaseLost(job_id)
    running = _begin(tx, job, owner, lease, now)
    tx.move_count(job.queue, JobState.QUEUED, JobState.RUNNING)
    return Changed(running, (running.stream,))


def unreserve(tx: JobTx, owner: str, held: list[tuple[str, float]], now: float) -> Changed[int]:
    """Hand back reservations (job id, the ``run_at`` it had) that *owner* will not start: each
    goes back to its place in its queue."""
    names: list[str] = []
    for job_id, run_at in held:
        job = _held(tx, job_id, owner)
        if job is None:
            continue
        tx.update_job(job_id, run_at=run_at, lease_owner=None, lease_expires=None)
        names.append(queue_key(job.queue))
    return Changed(len(names), tuple(dict.fromkeys(names)))


def renew(
    tx: JobTx, owner: str, job_ids: list[str], lease: float, now: float
) -> Changed[tuple[list[str], list[str]]]:
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
    return Changed((owned, cancel), ())


def _owned(tx: JobTx, job_id: str, owner: str, attempt: int) -> JobRecord:
    job = tx.get_job(job_id)
    if job is None or job.state != JobState.RUNNING or job.lease_owner != owner:
        raise LeaseLost(job_id)
    if job.attempt != attempt:
        raise LeaseLost(job_id)
    return job


def emit(
    tx: JobTx, job_id: str, owner: str, attempt: int, messages: list[dict[str, Any]], now: float
) -> Changed[None]:
    job = _owned(tx, job_id, owner, attempt)
    _emit(tx, job, now, *messages)
    return Changed(None, (job.stream,))


# -- the end of an attempt ------------------------------------------------------------------


def finish(
    tx: JobTx, job_id: str, owner: str, attempt: int, outcome: Outcome, now: float
) -> Changed[JobRecord]:
    job = _owned(tx, job_id, owner, attempt)
    names: tuple[str, ...] = (job.stream,)
    released: dict[str, Any] = {"lease_owner": None, "lease_expires": None}
    # A job's error says why it failed or was cancelled, and nothing else: it is null in every
    # other state (each failed attempt's error stays in the job's stream). Written only when
    # there is one to clear (a job stored by an older release kept it while queued for a retry).
    if job.error is not None:
        released["error"] = None
    if outcome.kind == "succeeded":
        done = _transition(
            tx, job, JobState.SUCCEEDED, now, result=outcome.result, finished_at=now, **released
        )
        result = {"type": "result", "result": outcome.result}
        _emit(tx, done, now, result, _state(JobState.SUCCEEDED, attempt), close=True)
    elif outcome.kind == "failed":
        assert outcome.error is not None
        error = {"type": "error", "attempt": attempt, "error": outcome.error}
        if outcome.retry_at is not None and attempt < job.max_attempts:
            done = _transition(
                tx,
                job,
                JobState.QUEUED,
                now,
                run_at=outcome.retry_at,
                **released,
            )
            retry_in = round(max(0.0, outcome.retry_at - now), 3)
            _emit(tx, done, now, error, state_message(JobState.QUEUED, attempt, retry_in=retry_in))
            names += (queue_key(job.queue),)
        else:
            released["error"] = outcome.error
            done = _transition(tx, job, JobState.FAILED, now, finished_at=now, **released)
            _emit(tx, done, now, error, _state(JobState.FAILED, attempt), close=True)
    elif outcome.kind == "cancelled":
        done = _cancel_now(tx, job, now)
    elif outcome.kind == "release":
        # Handed back (shutdown, or a node that lacks the task): the attempt does not count.
        run_at = outcome.retry_at if outcome.retry_at is not None else now
        done = _transition(
            tx, job, JobState.QUEUED, now, attempt=attempt - 1, run_at=run_at, **released
        )
        _emit(tx, done, now, state_message(JobState.QUEUED, attempt - 1, reason="handed_back"))
        names += (queue_key(job.queue),)
    else:  # pragma: no cover - a programming error
        raise ValueError(outcome.kind)
    return Changed(done, names)


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
    _emit(tx, done, now, _state(JobState.CANCELLED, job.attempt), close=True)
    return done


def cancel(tx: JobTx, job_id: str, now: float) -> Changed[JobRecord]:
    """Queued: cancelled at once. Running: flagged; its worker stops it. Terminal: as it is."""
    job = tx.get_job(job_id)
    if job is None:
        raise NotFound(f"job not found: {job_id}")
    if job.state.terminal:
        return Changed(job, ())
    if job.state == JobState.QUEUED:
        return Changed(_cancel_now(tx, job, now), (job.stream,))
    if not job.cancel_requested:
        tx.update_job(job_id, cancel_requested=True)
        job = replace(job, cancel_requested=True)
    return Changed(job, (job.stream,))


# -- recovery and retention -----------------------------------------------------------------


def recover_expired(tx: JobTx, now: float) -> Changed[list[JobRecord]]:
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
            reason = state_message(JobState.QUEUED, job.attempt, reason="lease_expired")
            _emit(tx, done, now, reason)
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
            message = {"type": "error", "attempt": job.attempt, "error": error}
            _emit(tx, done, now, message, _state(JobState.FAILED, job.attempt), close=True)
        names.append(job.stream)
        recovered.append(done)
    return Changed(recovered, tuple(names))


def purge(tx: JobTx, before: float, limit: int, now: float) -> Changed[int]:
    """Remove terminal jobs finished before *before*, with their streams."""
    removed = tx.finished_before(before, limit)
    for job_id in removed:
        job = tx.get_job(job_id)
        if job is None:
            continue
        tx.delete_job(job_id)
        tx.move_count(job.queue, job.state, None)
        row = tx.get_stream(job_stream_name(job_id))
        if row is not None:
            streams.delete(tx, row.name, now)
    return Changed(len(removed), ())

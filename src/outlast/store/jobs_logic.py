"""The job rules, written once over a transaction (:class:`JobTx`), like the stream rules.

Every change of a job and the messages it writes to its stream (``jobs/<id>``) happen in one
transaction, so the stream never says something the job table does not, and a crash between
the two cannot happen. State changes go through :func:`_transition`, which enforces
:data:`outlast.models.TRANSITIONS`.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from outlast.errors import Conflict, Gone, LeaseLost, NotFound, QueueFull, RequestError
from outlast.models import (
    ErrorCode,
    JobRecord,
    JobState,
    NewJob,
    can_transition,
    evolve_job,
    job_stream_name,
    new_job_id,
    rfc3339,
    state_message,
)
from outlast.store import streams_logic as streams
from outlast.store import webhooks_logic as webhooks
from outlast.store.base import CreateSpec, Outcome, SubmitResult, Unit, UpstreamLimits
from outlast.store.streams_logic import Changed

JSON = "application/json"
# A message for a job's stream: a dict, or already encoded (see _state).
Message = dict[str, Any] | bytes
QUEUE_PREFIX = "\0queue:"  # notifier key for "a job became claimable in this queue"


def queue_key(queue: str) -> str:
    return QUEUE_PREFIX + queue


class JobTx(streams.Tx, webhooks.DeliveryTx):
    def lease_of(self, job_id: str) -> tuple[JobState, str | None, int] | None:
        """Who runs the job: (state, lease owner, attempt), or ``None`` for no such job: what
        an emit checks. A store may read these without the rest of the job (its input)."""
        job = self.get_job(job_id)
        return None if job is None else (job.state, job.lease_owner, job.attempt)

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
    def ready(self, queue: str, now: float, keyed: bool, want: int = 0) -> Iterator[JobRecord]:
        """The due jobs of *queue* in the order they start: priority (highest first), then
        turn, then id. Read lazily: a claim stops when it has what it needs (*want* jobs, if
        nothing is skipped: a backend may read that many first). With *keyed*, the running
        counts of the keys met will be asked for (a backend may fetch them ahead)."""

    # Turns: round-robin across concurrency keys (see _Admission._take_turn).
    @abc.abstractmethod
    def queue_turn(self, queue: str) -> int:
        """The turn of the job started last in *queue* (its virtual time)."""

    @abc.abstractmethod
    def advance_queue_turn(self, queue: str, turn: int) -> None:
        """Move the queue's turn to *turn* (a backend may keep the larger of the two)."""

    @abc.abstractmethod
    def key_turn(self, queue: str, key: str | None) -> int:
        """The turn given last to a job of *key* (``None``: jobs without a key)."""

    @abc.abstractmethod
    def set_key_turn(self, queue: str, key: str | None, turn: int) -> None: ...
    @abc.abstractmethod
    def key_running(self, queue: str, key: str) -> int: ...
    @abc.abstractmethod
    def move_key_running(self, queue: str, key: str, delta: int) -> None: ...
    @abc.abstractmethod
    def expired_leases(self, now: float) -> list[JobRecord]: ...
    @abc.abstractmethod
    def finished_before(self, ts: float, limit: int) -> list[str]: ...
    @abc.abstractmethod
    def delete_job(self, job_id: str) -> None: ...
    @abc.abstractmethod
    def upstream_state(self, name: str) -> dict[str, Any] | None:
        """What the limiter keeps of upstream *name* (see acquire_upstream)."""

    @abc.abstractmethod
    def set_upstream_state(self, name: str, state: dict[str, Any]) -> None: ...
    @abc.abstractmethod
    def queue_paused(self, queue: str) -> bool: ...
    @abc.abstractmethod
    def set_queue_paused(self, queue: str, paused: bool) -> None: ...
    @abc.abstractmethod
    def paused_queues(self) -> set[str]: ...


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
    _append(tx, job.stream, now, messages, close)


def _append(
    tx: JobTx, stream: str, now: float, messages: Sequence[Message], close: bool = False
) -> None:
    """:func:`_emit` to the job stream named *stream*."""
    if not messages:
        return
    row = tx.get_stream(stream)
    if row is None or row.expired(now):
        raise NotFound(f"stream not found: {stream}")
    if row.deleted:
        raise Gone(f"stream was deleted: {stream}")
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
    if new.terminal and job.callback is not None:
        # The completion webhook's event, in the same write as the end (webhooks_logic).
        event = webhooks.on_terminal(job, new, now)
        if event is not None:
            fields["callback"] = event
    done = _set_state(tx, job, new, fields)
    if new != job.state:
        tx.move_count(job.queue, job.state, new)
        if job.state == JobState.RUNNING and job.concurrency_key is not None:
            tx.move_key_running(job.queue, job.concurrency_key, -1)
    return done


# -- submit ---------------------------------------------------------------------------------


def _same_request(job: JobRecord, new: NewJob) -> bool:
    def canon(value: Any) -> str:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))

    return job.task == new.task and canon(job.input) == canon(new.input)


class _Admission:
    """Jobs admitted in one transaction, in order (:func:`submit_many`). What admission reads
    is read once per queue (its waiting count, its turn) and per key (the key's last turn), and
    kept up to date here as jobs are admitted; :meth:`close` writes the counts and turns back,
    once each. Jobs and their streams are written as they are admitted, so a later job's
    idempotency key finds an earlier one."""

    def __init__(self, tx: JobTx, now: float) -> None:
        self.tx, self.now = tx, now
        self.waiting: dict[str, int] = {}  # queue -> waiting jobs, those admitted here included
        self.added: dict[str, int] = {}  # queue -> jobs admitted here
        self.queue_turns: dict[str, int] = {}
        self.key_turns: dict[tuple[str, str | None], int] = {}  # the turn each key gave last

    def admit(self, new: NewJob, capacity: int) -> SubmitResult:
        """*new* admitted (or the job its key names); raises ``Conflict`` or ``QueueFull``
        before anything is written."""
        tx, queue = self.tx, new.queue
        if new.key is not None:
            existing = tx.find_job_by_key(new.key)
            if existing is not None:
                if not _same_request(existing, new):
                    raise Conflict(
                        "this idempotency key was used with a different task or input",
                        code="idempotency_conflict",
                    )
                return SubmitResult(existing, created=False)
        waiting = self.waiting.get(queue)
        if waiting is None:
            waiting = self.waiting[queue] = tx.count_waiting(queue)
        if waiting >= capacity:
            raise QueueFull(queue, capacity)
        job = JobRecord(
            id=new_job_id(self.now),
            task=new.task,
            queue=queue,
            state=JobState.QUEUED,
            input=new.input,
            attempt=0,
            max_attempts=new.max_attempts,
            timeout=new.timeout,
            created_at=self.now,
            run_at=self.now + new.delay,
            key=new.key,
            callback=new.callback,
            priority=new.priority,
            concurrency_key=new.concurrency_key,
            retry_of=new.retry_of,
            turn=self._take_turn(queue, new.concurrency_key),
        )
        tx.insert_job(job)
        self.waiting[queue] = waiting + 1
        self.added[queue] = self.added.get(queue, 0) + 1
        # The stream is created with its first message, as a stream created then appended to.
        first = _state(JobState.QUEUED, 0)
        spec = CreateSpec(content_type=JSON, units=[(first, 1)])
        streams.create(tx, job.stream, spec, self.now, fresh=True)
        return SubmitResult(job, created=True)

    def _take_turn(self, queue: str, key: str | None) -> int:
        """The turn of a new job of *key*: one more than the later of the queue's turn and the
        turn the key gave its previous job (see "fair order" below)."""
        last = self.key_turns.get((queue, key))
        if last is None:
            last = self.tx.key_turn(queue, key)
        queue_turn = self.queue_turns.get(queue)
        if queue_turn is None:
            queue_turn = self.queue_turns[queue] = self.tx.queue_turn(queue)
        turn = self.key_turns[queue, key] = max(queue_turn, last) + 1
        return turn

    def close(self) -> tuple[str, ...]:
        """Write the counts and turns back; the queues whose workers must wake."""
        for (queue, key), turn in self.key_turns.items():
            self.tx.set_key_turn(queue, key, turn)
        for queue, n in self.added.items():
            self.tx.move_count(queue, None, JobState.QUEUED, n)
        return tuple(queue_key(queue) for queue in self.added)


def submit(tx: JobTx, new: NewJob, capacity: int, now: float) -> Changed[SubmitResult]:
    admission = _Admission(tx, now)
    result = admission.admit(new, capacity)
    wake = admission.close()
    return Changed(result, (result.job.stream, *wake) if result.created else ())


def submit_many(
    tx: JobTx, batch: Sequence[tuple[NewJob, int]], now: float
) -> Changed[list[SubmitResult | RequestError]]:
    """:func:`submit` for each (job, capacity) of *batch*, in order, in this one transaction.
    A refused job is answered with its refusal and the others go on (a refusal comes before
    anything of its job is written). Each queue's workers are woken once, however many jobs
    it got."""
    admission = _Admission(tx, now)
    results: list[SubmitResult | RequestError] = []
    names: list[str] = []
    for new, capacity in batch:
        try:
            result = admission.admit(new, capacity)
        except (Conflict, QueueFull) as refusal:
            results.append(refusal)
            continue
        results.append(result)
        if result.created:
            names.append(result.job.stream)
    return Changed(results, (*names, *admission.close()))


# -- fair order: priorities, turns and per-key limits ---------------------------------------
#
# Within a queue, jobs start by priority (highest first), then by *turn*, then by id (creation
# order). A job's turn is given at submission: one more than the later of the queue's turn (the
# turn of the job started last) and the turn its key gave its previous job. So each key (and
# the jobs without a key, as one more lane) has one job per turn: a tenant with 1,000 waiting
# jobs and one with 5 alternate, and a key that was idle starts at the front. Jobs without a
# key keep their order among themselves (first come, first served within a priority).

# How many due jobs a claim looks at, at most, past jobs it may not start (their key is at its
# limit): a claim stays cheap whatever the backlog of one key.
SCAN_LIMIT = 1024


def _startable(tx: JobTx, queue: str, now: float, limit: int, per_key: int) -> list[JobRecord]:
    """Up to *limit* due jobs of *queue* in start order, leaving out jobs whose key already
    runs *per_key* jobs (0: no limit), counting those picked here."""
    picked: list[JobRecord] = []
    if limit <= 0:
        return picked
    running: dict[str, int] = {}
    seen = 0
    for job in tx.ready(queue, now, per_key > 0, limit):
        key = job.concurrency_key
        if per_key > 0 and key is not None:
            count = running.get(key)
            if count is None:
                count = tx.key_running(queue, key)
            running[key] = count
            if count >= per_key:
                seen += 1
                if seen >= SCAN_LIMIT:
                    break
                continue
            running[key] = count + 1
        picked.append(job)
        if len(picked) >= limit:
            break
    return picked


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
    if job.waiting is not None:
        fields["waiting"] = None
    running = _set_state(tx, job, JobState.RUNNING, fields)
    if job.concurrency_key is not None:
        tx.move_key_running(job.queue, job.concurrency_key, 1)
    _emit(tx, running, now, _state(JobState.RUNNING, attempt))
    return running


def claim(
    tx: JobTx, queue: str, owner: str, limit: int, lease: float, now: float, per_key: int = 0
) -> Changed[list[JobRecord]]:
    if tx.queue_paused(queue):
        return Changed([], ())
    startable = _startable(tx, queue, now, limit, per_key)
    claimed = [_begin(tx, job, owner, lease, now) for job in startable]
    if claimed:  # every claimable job is queued in this queue: counted at once
        tx.move_count(queue, JobState.QUEUED, JobState.RUNNING, len(claimed))
        tx.advance_queue_turn(queue, max(job.turn for job in startable))
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
    they were (``run_at`` is still when they became due). Per-key limits are not checked here:
    workers do not reserve on queues that have one."""
    if tx.queue_paused(queue):
        return Changed([], ())
    held = _startable(tx, queue, now, limit, 0)
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
    tx.advance_queue_turn(job.queue, job.turn)
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
    # The lease alone, not the whole job: an emit's cost does not grow with the job's input.
    if tx.lease_of(job_id) != (JobState.RUNNING, owner, attempt):
        raise LeaseLost(job_id)
    stream = job_stream_name(job_id)
    _append(tx, stream, now, messages)
    return Changed(None, (stream,))


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
        retry_at = outcome.retry_at
        if retry_at is None and outcome.retry_in is not None:
            retry_at = now + outcome.retry_in
        if retry_at is not None and attempt < job.max_attempts:
            done = _transition(tx, job, JobState.QUEUED, now, run_at=retry_at, **released)
            retry_in = round(max(0.0, retry_at - now), 3)
            _emit(tx, done, now, error, state_message(JobState.QUEUED, attempt, retry_in=retry_in))
            names += (queue_key(job.queue),)
        else:
            released["error"] = outcome.error
            done = _transition(tx, job, JobState.FAILED, now, finished_at=now, **released)
            _emit(tx, done, now, error, _state(JobState.FAILED, attempt), close=True)
    elif outcome.kind == "cancelled":
        done = _cancel_now(tx, job, now)
    elif outcome.kind == "release":
        # Handed back (shutdown, a node that lacks the task, or waiting for an upstream's
        # limits): the attempt does not count.
        run_at = outcome.retry_at if outcome.retry_at is not None else now
        reason = "handed_back"
        if outcome.waiting is not None:
            reason = str(outcome.waiting["reason"])
            released["waiting"] = {"reason": reason, "until": rfc3339(run_at)}
            released["waited"] = job.waited + max(0.0, run_at - now)
        done = _transition(
            tx, job, JobState.QUEUED, now, attempt=attempt - 1, run_at=run_at, **released
        )
        extra: dict[str, Any] = {"reason": reason}
        if outcome.waiting is not None:
            extra["retry_in"] = round(max(0.0, run_at - now), 3)
        _emit(tx, done, now, state_message(JobState.QUEUED, attempt - 1, **extra))
        names += (queue_key(job.queue),)
    else:  # pragma: no cover - a programming error
        raise ValueError(outcome.kind)
    if job.concurrency_key is not None and queue_key(job.queue) not in names:
        names += (queue_key(job.queue),)  # its key's next job may start now
    return Changed(done, names + _event_names(done))


def _event_names(job: JobRecord) -> tuple[str, ...]:
    """What to wake for a job that may have just recorded its webhook event."""
    return (webhooks.DELIVERIES_KEY,) if webhooks.due_at(job.callback) is not None else ()


def _cancel_now(tx: JobTx, job: JobRecord, now: float) -> JobRecord:
    error = {"code": ErrorCode.CANCELLED.value, "message": "cancelled on request"}
    # A job cancelled while it waited for an upstream waits no more.
    waiting: dict[str, Any] = {} if job.waiting is None else {"waiting": None}
    done = _transition(
        tx,
        job,
        JobState.CANCELLED,
        now,
        error=error,
        finished_at=now,
        lease_owner=None,
        lease_expires=None,
        **waiting,
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
        done = _cancel_now(tx, job, now)
        return Changed(done, (job.stream, *_event_names(done)))
    if not job.cancel_requested:
        tx.update_job(job_id, cancel_requested=True)
        job = replace(job, cancel_requested=True)
    return Changed(job, (job.stream,))


def retry(tx: JobTx, job_id: str, capacity: int, now: float) -> Changed[SubmitResult]:
    """A new job repeating a failed or cancelled one: same task, queue, input and options,
    with ``retry_of`` naming it. The old job and its stream stay as they were."""
    job = tx.get_job(job_id)
    if job is None:
        raise NotFound(f"job not found: {job_id}", code="job_not_found")
    if job.state not in (JobState.FAILED, JobState.CANCELLED):
        raise Conflict(
            f"only a failed or cancelled job can be retried; {job_id} is {job.state.value}",
            code="invalid_state",
        )
    again = NewJob(
        task=job.task,
        queue=job.queue,
        input=job.input,
        max_attempts=job.max_attempts,
        timeout=job.timeout,
        priority=job.priority,
        concurrency_key=job.concurrency_key,
        retry_of=job.id,
        # The webhook asked for, not how its delivery went.
        callback=None
        if job.callback is None
        else {"url": job.callback["url"], "events": job.callback["events"]},
    )
    return submit(tx, again, capacity, now)


# -- upstream limits ------------------------------------------------------------------------
#
# One state per named upstream, shared by every process: the calls running now (holder -> when
# its hold ends, so that a crashed worker's turn comes back), the earliest time of the next
# request (rpm: one every 60/rpm s), and a token bucket refilled at tpm/60 per second, spent
# by the usage each call reports.

# rpm spaces requests a little more than 60/rpm apart (this share of it, at most
# RPM_MARGIN_MAX s): the time a request takes to reach the upstream varies, and two requests
# must not arrive closer than the limit.
RPM_MARGIN = 0.1
RPM_MARGIN_MAX = 0.1
# A call refused for max_concurrency asks again after this long (a call ending does not wake
# it: it waits in its queue, not in a worker slot).
CONCURRENCY_RECHECK = 0.5


def acquire_upstream(
    tx: JobTx, name: str, holder: str, limits: UpstreamLimits, hold: float, now: float
) -> Changed[tuple[float, str] | None]:
    state = tx.upstream_state(name) or {}
    holders = {h: t for h, t in state.get("holders", {}).items() if t > now and h != holder}
    if limits.max_concurrency and len(holders) >= limits.max_concurrency:
        soonest = min(holders.values())
        return Changed((min(soonest, now + CONCURRENCY_RECHECK), "upstream_concurrency"), ())
    tokens = float(state.get("tokens", limits.tpm))
    if limits.tpm:
        elapsed = max(0.0, now - float(state.get("at", now)))
        tokens = min(float(limits.tpm), tokens + elapsed * limits.tpm / 60)
        if tokens <= 0:
            return Changed((now + (1 - tokens) * 60 / limits.tpm, "upstream_rate_limited"), ())
    next_at = float(state.get("next_at", 0.0))
    if limits.rpm:
        if next_at > now:
            return Changed((next_at, "upstream_rate_limited"), ())
        interval = 60 / limits.rpm
        next_at = now + interval + min(RPM_MARGIN * interval, RPM_MARGIN_MAX)
    if limits.max_concurrency:
        holders[holder] = now + hold
    tx.set_upstream_state(
        name, {"holders": holders, "next_at": next_at, "tokens": tokens, "at": now}
    )
    return Changed(None, ())


def release_upstream(tx: JobTx, name: str, holder: str, tokens: int, now: float) -> Changed[None]:
    state = tx.upstream_state(name)
    if state is None:
        return Changed(None, ())
    holders = {h: t for h, t in state.get("holders", {}).items() if t > now and h != holder}
    left = float(state.get("tokens", 0.0)) - tokens
    tx.set_upstream_state(name, {**state, "holders": holders, "tokens": left})
    return Changed(None, ())


# -- queues ---------------------------------------------------------------------------------


def pause(tx: JobTx, queue: str, paused: bool, now: float) -> Changed[None]:
    """Pause a queue (no claim or reservation takes its jobs) or resume it (its workers,
    on every node, are woken to claim)."""
    tx.set_queue_paused(queue, paused)
    return Changed(None, () if paused else (queue_key(queue),))


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
        names.extend(_event_names(done))
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

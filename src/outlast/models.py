"""Jobs as data: states, the one place that says which transitions exist, ids, and messages."""

from __future__ import annotations

import base64
import os
import threading
import time
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from outlast import redact


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

# Every transition a job can make. A retry, a hand-back at shutdown and a recovered lease are
# running → queued; cancel reaches cancelled from queued or running.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {JobState.QUEUED, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


def can_transition(old: JobState, new: JobState) -> bool:
    return new in TRANSITIONS[old]


# How an attempt ended, as a worker reports it to the store: the job succeeded; failed (retried
# when it has attempts left and the failure is retryable); was cancelled; or is handed back to
# its queue without spending the attempt ("release": shutdown, or a node that lacks the task).
OutcomeKind = Literal["succeeded", "failed", "cancelled", "release"]


class ErrorCode(StrEnum):
    TIMEOUT = "timeout"
    EXCEPTION = "exception"
    UPSTREAM_STATUS = "upstream_status"
    UPSTREAM_ERROR = "upstream_error"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"
    LEASE_LOST = "lease_lost"


# Ids made by this process: (milliseconds, sequence) of the last one, so that two ids made in
# the same millisecond still sort in creation order.
_last_id_stamp = (0, 0)
_id_lock = threading.Lock()
SEQUENCE_LIMIT = 1 << 16
# Crockford's base32 alphabet: its characters are in ASCII order (standard base32's are not), so
# ids sort as text in the order of the numbers they encode.
_ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_FROM_B32 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ID_ALPHABET.encode())
JOB_ID_PATTERN = r"job_[0-9a-hjkmnp-tv-z]{32}"


def new_job_id(now: float | None = None) -> str:
    """``job_`` + 48 bits of milliseconds + a 16-bit sequence + 96 random bits, in base32.

    Unguessable (the random part) and sortable by creation time: across processes to the
    millisecond, within one process exactly (the sequence orders ids of the same millisecond).
    """
    global _last_id_stamp
    millis = int((time.time() if now is None else now) * 1000)
    with _id_lock:
        last_millis, last_seq = _last_id_stamp
        if millis <= last_millis:
            millis, seq = last_millis, last_seq + 1
            if seq >= SEQUENCE_LIMIT:
                millis, seq = millis + 1, 0
        else:
            seq = 0
        _last_id_stamp = (millis, seq)
    value = (millis << 112) | (seq << 96) | int.from_bytes(os.urandom(12), "big")
    # 160 bits = 32 digits of 5 bits, most significant first: string order is number order.
    # (base32 cuts the bytes into those digits; the table turns its alphabet into ours.)
    return "job_" + base64.b32encode(value.to_bytes(20, "big")).translate(_FROM_B32).decode()


def rfc3339(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# Where job streams live: only outlast writes under it.
JOB_STREAMS = "jobs/"


def job_stream_name(job_id: str) -> str:
    """The name of the stream that holds a job's events."""
    return JOB_STREAMS + job_id


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job as stored. Timestamps are seconds since the epoch."""

    id: str
    task: str
    queue: str
    state: JobState
    input: Any
    attempt: int
    max_attempts: int
    timeout: float
    created_at: float
    run_at: float
    result: Any = None
    error: dict[str, Any] | None = None
    started_at: float | None = None
    finished_at: float | None = None
    key: str | None = None
    lease_owner: str | None = None
    lease_expires: float | None = None
    cancel_requested: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # The completion webhook asked for and its delivery (store/webhooks_logic.py): None, or
    # {url, events} until the job ends, then with the event's delivery state.
    callback: dict[str, Any] | None = None
    # Flow control (docs/flow-control.md): higher priority runs first within a queue; jobs of
    # one concurrency key share the queue's per-key limit; a retry names the job it repeats.
    priority: int = 0
    concurrency_key: str | None = None
    retry_of: str | None = None
    # Its place among the keys of its queue (fair order: see store.jobs_logic); internal.
    turn: int = 0
    # Waiting for an upstream's limits (queued, not an attempt): {"reason", "until"}; and the
    # seconds it waited so for in all (bounded by [jobs] rate_limit_wait_max).
    waiting: dict[str, Any] | None = None
    waited: float = 0.0

    @property
    def stream(self) -> str:
        return job_stream_name(self.id)

    def to_json(self, *, links: dict[str, str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "task": self.task,
            "queue": self.queue,
            "state": self.state.value,
            # Upstream credentials stay in storage for the worker, never in what is shown.
            "input": redact.job_input(self.task, self.input),
            "result": self.result,
            "error": self.error,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "timeout": float(self.timeout),
            "created_at": rfc3339(self.created_at),
            "started_at": rfc3339(self.started_at),
            "finished_at": rfc3339(self.finished_at),
            "stream": f"/v1/stream/{self.stream}",
            "events": f"/v1/jobs/{self.id}/events",
        }
        if self.key is not None:
            body["key"] = self.key
        body["priority"] = self.priority
        body["concurrency_key"] = self.concurrency_key
        if self.retry_of is not None:
            body["retry_of"] = self.retry_of
        if self.waiting is not None:
            body["waiting"] = self.waiting
        if self.callback is not None:
            body["callback"] = callback_json(self.callback)
        if links:
            body.update(links)
        return body


_JOB_FIELDS = tuple(f.name for f in fields(JobRecord))


def evolve_job(job: JobRecord, changes: dict[str, Any]) -> JobRecord:
    """``dataclasses.replace(job, **changes)``, at half the cost: a job changes at every
    transition, and the stores build the changed record more than once."""
    return JobRecord(
        *[changes[name] if name in changes else getattr(job, name) for name in _JOB_FIELDS]
    )


@dataclass(frozen=True, slots=True)
class NewJob:
    """What a submission asks for, validated."""

    task: str
    queue: str
    input: Any
    max_attempts: int
    timeout: float
    delay: float = 0.0
    key: str | None = None
    callback: dict[str, Any] | None = None  # {"url", "events"}: a completion webhook
    priority: int = 0
    concurrency_key: str | None = None
    retry_of: str | None = None


def callback_json(callback: dict[str, Any]) -> dict[str, Any]:
    """A job's callback as the API shows it: what was asked, and how its delivery goes (the
    state is null until the job ends with an event it asked for)."""
    return {
        "url": callback["url"],
        "events": callback["events"],
        "state": callback.get("state"),
        "attempts": callback.get("attempts", 0),
        "last_status": callback.get("last_status"),
        "last_error": callback.get("last_error"),
        "next_attempt_at": (
            rfc3339(callback.get("next_attempt_at")) if callback.get("state") == "pending" else None
        ),
    }


def state_message(state: JobState, attempt: int, **extra: Any) -> dict[str, Any]:
    return {"type": "state", "state": state.value, "attempt": attempt, **extra}

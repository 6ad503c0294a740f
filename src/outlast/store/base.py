"""The store contract: what every backend (SQLite, Redis) implements, and its data types.

A stream is an append-only sequence of *units*: one unit per append (one POST, or the initial
body of a PUT). A unit of a byte stream holds the appended bytes; a unit of a JSON stream holds the
messages of one flattened batch, each serialised compactly and joined with commas, so a read of
several units is ``"[" + ",".join(units) + "]"``. Positions are byte counts from the stream's
start; offsets exposed to clients are positions formatted by :func:`format_offset`.

Every method is a single atomic step in the backend: correctness never depends on state held in
one process, so many processes may share one store. Protocol violations raise the matching
:class:`~outlast.errors.RequestError` (``NotFound``, ``Conflict``, ``Gone``, ...).

This module depends on no implementation: the backends implement it through
:class:`~outlast.store.template.RuleStore` (the layers are drawn in :mod:`outlast.store`).
"""

from __future__ import annotations

import abc
import asyncio
import functools
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Sequence

    from outlast.errors import RequestError
    from outlast.models import JobRecord, JobState, NewJob, OutcomeKind

# Offsets look like the reference server's: "<16 digits>_<16 digits>", fixed width so that
# lexicographic order is stream order. The first part is reserved (always zero here).
OFFSET_WIDTH = 16
ZERO_OFFSET = "0" * OFFSET_WIDTH + "_" + "0" * OFFSET_WIDTH
_OFFSET_RE = re.compile(r"([0-9]{16})_([0-9]{16})")


def format_offset(position: int) -> str:
    return f"{0:016d}_{position:016d}"


def parse_offset(token: str) -> int | None:
    """The position an offset token names, or ``None`` when it is not one of ours."""
    match = _OFFSET_RE.fullmatch(token)
    if match is None or match.group(1) != "0" * OFFSET_WIDTH:
        return None
    return int(match.group(2))


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """A stream's metadata as of one moment."""

    id: int  # internal; unique across re-creations of the same name (used in ETags)
    name: str
    content_type: str
    tail: int
    closed: bool
    created_at: float
    touched_at: float
    ttl: int | None = None
    expires_at: float | None = None  # absolute, seconds since the epoch
    last_seq: str | None = None

    @property
    def is_json(self) -> bool:
        return is_json_type(self.content_type)

    def expiry(self) -> float | None:
        """When the stream expires: ``expires_at``, or ``ttl`` after the last access."""
        if self.expires_at is not None:
            return self.expires_at
        if self.ttl is not None:
            return self.touched_at + self.ttl
        return None


@dataclass(frozen=True, slots=True)
class Unit:
    start: int
    end: int
    count: int  # messages in the unit (1 for byte streams)
    data: bytes


@dataclass(frozen=True, slots=True)
class ReadResult:
    info: StreamInfo
    units: list[Unit]
    next: int  # position after the last unit returned

    @property
    def up_to_date(self) -> bool:
        return self.next >= self.info.tail


@dataclass(frozen=True, slots=True)
class Producer:
    id: str
    epoch: int
    seq: int


@dataclass(frozen=True, slots=True)
class CreateSpec:
    content_type: str
    ttl: int | None = None
    expires_at: float | None = None
    closed: bool = False
    units: list[tuple[bytes, int]] = field(default_factory=list)  # (data, message count)
    fork_from: str | None = None
    fork_offset: int | None = None  # position in the source; None = the source's tail
    fork_sub_offset: int = 0  # bytes (or messages) of the unit at fork_offset to take
    content_type_given: bool = True


@dataclass(frozen=True, slots=True)
class CreateResult:
    created: bool
    info: StreamInfo


@dataclass(frozen=True, slots=True)
class AppendSpec:
    content_type: str | None
    unit: tuple[bytes, int] | None  # None: close without data
    close: bool = False
    stream_seq: str | None = None
    producer: Producer | None = None


@dataclass(frozen=True, slots=True)
class AppendResult:
    info: StreamInfo
    duplicate: bool = False  # an idempotent producer's retry: nothing was written
    producer_epoch: int | None = None
    producer_seq: int | None = None  # highest accepted seq for this producer and epoch
    new_epoch: bool = False


def is_json_type(content_type: str) -> bool:
    return media_type(content_type) == "application/json"


@functools.lru_cache(maxsize=256)
def media_type(content_type: str) -> str:
    """The bare media type, lower-cased, without parameters (cached: every append compares its
    type with its stream's, and a server sees few distinct types)."""
    return content_type.split(";", 1)[0].strip().lower()


class StreamStore(abc.ABC):
    """Durable streams. Appends are durable when the call returns."""

    @abc.abstractmethod
    async def create_stream(self, name: str, spec: CreateSpec) -> CreateResult:
        """Create *name* (or a fork of ``spec.fork_from``); idempotent when it matches."""

    @abc.abstractmethod
    async def append(self, name: str, spec: AppendSpec) -> AppendResult:
        """Append one unit and/or close the stream, atomically with producer state."""

    @abc.abstractmethod
    async def read(self, name: str, position: int, max_bytes: int) -> ReadResult:
        """Units starting at *position*, at least one if any, at most about *max_bytes*."""

    @abc.abstractmethod
    async def head(self, name: str) -> StreamInfo:
        """The stream's metadata (does not count as an access for TTL)."""

    @abc.abstractmethod
    async def delete_stream(self, name: str) -> None:
        """Delete *name*; a stream that forks still read from is kept as soft-deleted."""

    @abc.abstractmethod
    async def wait(self, name: str, position: int, timeout: float) -> bool:
        """Wait until the stream grows past *position*, is closed, or *timeout* passes.

        Returns ``True`` when something changed (the caller re-reads), ``False`` on timeout.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush and release everything."""


@dataclass(frozen=True, slots=True)
class JobPage:
    jobs: list[JobRecord]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class SubmitResult:
    job: JobRecord
    created: bool  # False: an earlier submission with the same idempotency key


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended, as the worker reports it."""

    kind: OutcomeKind
    result: Any = None
    error: dict[str, Any] | None = None
    retry_at: float | None = None  # failed with attempts left: when to try again
    # ... or in how many seconds from when the failure is recorded (a backoff counts from the
    # commit, however long the write waited).
    retry_in: float | None = None
    # Released to wait for an upstream's limits: {"reason", "until" (seconds since the epoch)}.
    waiting: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class UpstreamLimits:
    """An upstream's limits (0: none): calls at once, requests and tokens per minute."""

    max_concurrency: int = 0
    rpm: float = 0.0
    tpm: int = 0


DeliveryOutcome = Literal["delivered", "retry", "failed"]


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """How one attempt to deliver a job's webhook event ended, as the delivering node reports
    it: delivered (2xx), to be retried at *retry_at*, or failed for good."""

    outcome: DeliveryOutcome
    status: int | None = None  # the receiver's HTTP status, if it answered
    error: str | None = None
    retry_at: float | None = None


class JobStore(abc.ABC):
    """Jobs: admission, claims with leases, attempts, cancel, recovery, retention.

    Each method is atomic across every process sharing the store: admission never overshoots a
    queue's capacity and a job is claimed by one worker at a time.
    """

    @abc.abstractmethod
    async def submit_job(self, new: NewJob, capacity: int) -> SubmitResult:
        """Admit a job (``QueueFull`` when the queue holds *capacity* waiting jobs)."""

    @abc.abstractmethod
    async def submit_jobs(
        self, batch: Sequence[tuple[NewJob, int]]
    ) -> list[SubmitResult | RequestError]:
        """Admit each (job, capacity) of *batch* on its own, in order, all in one commit: an
        entry is the job's :class:`SubmitResult`, or the refusal ``submit_job`` would have
        raised for it (``QueueFull``, ``Conflict``). Jobs admitted earlier in the batch count
        toward a later one's capacity, and its idempotency key finds them."""

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> JobRecord:
        """The job (``NotFound`` if there is none)."""

    @abc.abstractmethod
    async def list_jobs(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """A page of jobs, newest first; pass ``next_cursor`` back for the next page."""

    @abc.abstractmethod
    async def claim_jobs(
        self, queue: str, owner: str, limit: int, lease: float, per_key: int = 0
    ) -> list[JobRecord]:
        """Up to *limit* due jobs of *queue*, now running under *owner*'s lease: highest
        priority first, keys served in turn, and no more than *per_key* jobs of one
        concurrency key running at once (0: no limit)."""

    @abc.abstractmethod
    async def reserve_jobs(
        self, queue: str, owner: str, limit: int, hold: float
    ) -> list[JobRecord]:
        """Up to *limit* due jobs of *queue*, held for *owner* for *hold* seconds: still queued
        (not running), but no claim takes them until the hold ends. Start them with
        :meth:`start_job`; hand back those not started with :meth:`unreserve_jobs`."""

    @abc.abstractmethod
    async def start_job(self, job_id: str, owner: str, lease: float) -> JobRecord:
        """A job *owner* reserved starts its next attempt under *owner*'s lease (``LeaseLost``
        if it is no longer held: cancelled, or its hold ended and another worker took it)."""

    @abc.abstractmethod
    async def unreserve_jobs(self, owner: str, held: list[tuple[str, float]]) -> int:
        """Hand back reservations, as (job id, its ``run_at`` when reserved): each job goes
        back to its place in its queue. Returns how many were still held."""

    @abc.abstractmethod
    async def renew_leases(
        self, owner: str, job_ids: list[str], lease: float
    ) -> tuple[list[str], list[str]]:
        """Extend *owner*'s leases; returns (ids still owned, ids whose cancel was requested)."""

    @abc.abstractmethod
    async def emit(
        self, job_id: str, owner: str, attempt: int, messages: list[dict[str, Any]]
    ) -> None:
        """Append messages to the job's stream (``LeaseLost`` if the attempt is no longer ours)."""

    @abc.abstractmethod
    async def finish_job(
        self, job_id: str, owner: str, attempt: int, outcome: Outcome
    ) -> JobRecord:
        """End an attempt: succeeded, failed (maybe retried), cancelled, or released."""

    @abc.abstractmethod
    async def cancel_job(self, job_id: str) -> JobRecord:
        """Cancel: a queued job at once, a running one by flagging it for its worker."""

    @abc.abstractmethod
    async def retry_job(self, job_id: str, capacity: int) -> SubmitResult:
        """Submit a new job repeating a failed or cancelled one (``Conflict`` otherwise), with
        ``retry_of`` naming it; admitted like any submission (``QueueFull``)."""

    @abc.abstractmethod
    async def acquire_upstream(
        self, name: str, holder: str, limits: UpstreamLimits, hold: float
    ) -> tuple[float, str] | None:
        """Take a turn to call upstream *name* within its *limits*, shared by every process:
        ``None`` when taken (*holder* counts as running for at most *hold* seconds, until
        :meth:`release_upstream`), else (when to ask again, why)."""

    @abc.abstractmethod
    async def release_upstream(self, name: str, holder: str, tokens: int) -> None:
        """*holder*'s call ended, having used *tokens* (reported usage; 0 when unknown)."""

    @abc.abstractmethod
    async def pause_queue(self, queue: str, paused: bool) -> None:
        """Pause *queue* (claims and reservations take none of its jobs; running ones go on)
        or resume it, for every process sharing the store."""

    @abc.abstractmethod
    async def paused_queues(self) -> set[str]:
        """The queues paused now."""

    @abc.abstractmethod
    async def recover_expired(self) -> list[JobRecord]:
        """Return jobs with expired leases to their queue (or fail them when spent)."""

    @abc.abstractmethod
    async def purge_jobs(self, finished_before: float) -> int:
        """Remove terminal jobs (and their streams) finished before the given time."""

    @abc.abstractmethod
    async def queue_counts(self) -> dict[str, dict[str, int]]:
        """Jobs per queue and state."""

    @abc.abstractmethod
    async def next_due(self, queue: str) -> float | None:
        """When the earliest queued job of *queue* becomes due (``None``: nothing queued)."""

    @abc.abstractmethod
    def watch_queue(self, queue: str) -> asyncio.Event:
        """An event set when a job may next become claimable in *queue*.

        Take it *before* claiming, so that a submission during the claim still wakes the
        worker. Other processes' submissions may go unnoticed: wait with a timeout and claim
        again (the store re-checks anyway).
        """

    # -- completion webhooks (the rules: store/webhooks_logic.py) ---------------------------

    @abc.abstractmethod
    async def claim_deliveries(self, owner: str, limit: int, lease: float) -> list[JobRecord]:
        """Up to *limit* jobs whose webhook event is due, each event now leased to *owner* for
        *lease* seconds: no other node attempts it until the lease ends."""

    @abc.abstractmethod
    async def renew_deliveries(self, owner: str, job_ids: list[str], lease: float) -> list[str]:
        """Extend *owner*'s leases on events; returns the ids of the jobs it still holds."""

    @abc.abstractmethod
    async def finish_delivery(self, job_id: str, owner: str, result: DeliveryResult) -> JobRecord:
        """Record how *owner*'s attempt ended (``LeaseLost`` if the event is no longer its)."""

    @abc.abstractmethod
    async def release_deliveries(self, owner: str, job_ids: list[str]) -> int:
        """Hand back events whose attempt was cut (shutdown): due again at once, the attempt
        not counted. Returns how many were still held."""

    @abc.abstractmethod
    async def retry_delivery(self, job_id: str) -> JobRecord:
        """Send the job's event again, whatever its state (``NotFound``: no job or no
        callback; ``Conflict``: no event recorded)."""

    @abc.abstractmethod
    async def next_delivery_due(self) -> float | None:
        """When the earliest pending event is due (``None``: none is pending)."""

    @abc.abstractmethod
    async def pending_deliveries(self) -> int:
        """Events not yet delivered nor failed (every node sharing the store)."""

    @abc.abstractmethod
    def watch_deliveries(self) -> asyncio.Event:
        """An event set when an event may have become due in this process (take it before
        claiming, like :meth:`watch_queue`)."""


class Store(StreamStore, JobStore, abc.ABC):
    """Everything outlast keeps: streams and jobs, in one backend."""

    # -- settings shared by every node ------------------------------------------------------

    @abc.abstractmethod
    async def meta_setdefault(self, key: str, value: str) -> str:
        """The value stored under *key*; stores *value* first if there is none. Atomic: every
        node that asks gets the same value (the first one stored)."""

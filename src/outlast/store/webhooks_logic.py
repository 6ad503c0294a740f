"""The completion webhook rules, written once over a transaction (:class:`JobTx`), like the job
rules they extend.

A job submitted with a callback keeps it in its record (``JobRecord.callback``: ``{url,
events}``). When the job reaches a terminal state whose event it asked for, the rule that made
the transition records the event in the same write (:func:`on_terminal`), so no crash can come
between the job's end and its event. From then on the callback holds the event's delivery:

``id``               the ``webhook-id`` of every attempt (one event per job)
``type``             ``job.succeeded``, ``job.failed`` or ``job.cancelled``
``event_at``         when the job ended; ``since``: when delivery (re)started (``retry_for``)
``state``            ``pending``, ``delivered`` or ``failed``
``attempts``, ``last_status``, ``last_error``, ``next_attempt_at``
``owner``, ``lease_expires``  the node making an attempt now, and until when it may
``again``            a retry was asked while an attempt was in flight: pending once it ends

An event is *due* when it is pending and either not leased and its next attempt is due, or
its lease expired (the node making the attempt died: the attempt is made again, same id).
Each backend indexes pending events by :func:`due_at`; a claim leases the due ones, so at most
one attempt per event is in flight across every node sharing the store.
"""

from __future__ import annotations

import abc
from typing import Any

from outlast.errors import Conflict, LeaseLost, NotFound
from outlast.models import JobRecord, JobState, evolve_job
from outlast.store.base import DeliveryResult
from outlast.store.streams_logic import Changed

# Notifier key for "an event may be due now": the delivery loops of the node wake at once.
DELIVERIES_KEY = "\0webhooks"
EVENTS = {
    JobState.SUCCEEDED: "job.succeeded",
    JobState.FAILED: "job.failed",
    JobState.CANCELLED: "job.cancelled",
}
ALL_EVENTS = tuple(EVENTS.values())


class DeliveryTx(abc.ABC):
    """What these rules need of a transaction (a part of :class:`~outlast.store.jobs_logic.JobTx`):
    jobs, and the index of pending events by :func:`due_at`."""

    @abc.abstractmethod
    def get_job(self, job_id: str) -> JobRecord | None: ...
    @abc.abstractmethod
    def update_job(self, job_id: str, **fields: Any) -> None:
        """Change the job's fields; a changed ``callback`` moves its event in the index."""

    @abc.abstractmethod
    def due_deliveries(self, now: float, limit: int) -> list[JobRecord]:
        """Up to *limit* jobs whose event is due by *now*, earliest first."""

    @abc.abstractmethod
    def next_delivery_at(self) -> float | None:
        """When the earliest pending event is due (``None``: none is pending)."""

    @abc.abstractmethod
    def pending_deliveries(self) -> int: ...


def webhook_id(job_id: str) -> str:
    """The event's ``webhook-id``: one event per job, so derived from its id."""
    return "msg_" + job_id.removeprefix("job_")


def due_at(callback: dict[str, Any] | None) -> float | None:
    """When the event is next due for an attempt (``None``: nothing to deliver)."""
    if callback is None or callback.get("state") != "pending":
        return None
    if callback.get("owner") is not None:
        return float(callback["lease_expires"])
    return float(callback["next_attempt_at"])


def on_terminal(job: JobRecord, state: JobState, now: float) -> dict[str, Any] | None:
    """The callback of *job* ending in *state*, its event recorded; ``None`` when it asked for
    no event of this kind (the callback stays as it was)."""
    callback = job.callback
    event = EVENTS.get(state)
    if callback is None or event is None or event not in callback["events"]:
        return None
    return {
        "url": callback["url"],
        "events": callback["events"],
        "id": webhook_id(job.id),
        "type": event,
        "event_at": now,
        "since": now,
        "state": "pending",
        "attempts": 0,
        "last_status": None,
        "last_error": None,
        "next_attempt_at": now,
        "owner": None,
        "lease_expires": None,
        "again": False,
    }


def _set(tx: DeliveryTx, job: JobRecord, callback: dict[str, Any]) -> JobRecord:
    tx.update_job(job.id, callback=callback)
    return evolve_job(job, {"callback": callback})


def claim(
    tx: DeliveryTx, owner: str, limit: int, lease: float, now: float
) -> Changed[list[JobRecord]]:
    """Lease up to *limit* due events to *owner* for *lease* seconds."""
    claimed = []
    for job in tx.due_deliveries(now, limit):
        assert job.callback is not None
        leased = {**job.callback, "owner": owner, "lease_expires": now + lease, "again": False}
        claimed.append(_set(tx, job, leased))
    return Changed(claimed, ())


def _leased(tx: DeliveryTx, job_id: str, owner: str) -> JobRecord | None:
    job = tx.get_job(job_id)
    if job is None or job.callback is None:
        return None
    if job.callback.get("state") != "pending" or job.callback.get("owner") != owner:
        return None
    return job


def renew(
    tx: DeliveryTx, owner: str, job_ids: list[str], lease: float, now: float
) -> Changed[list[str]]:
    """Extend *owner*'s leases on events; returns the job ids whose event it still holds."""
    owned = []
    for job_id in job_ids:
        job = _leased(tx, job_id, owner)
        if job is not None:
            assert job.callback is not None
            _set(tx, job, {**job.callback, "lease_expires": now + lease})
            owned.append(job_id)
    return Changed(owned, ())


def finish(
    tx: DeliveryTx, job_id: str, owner: str, result: DeliveryResult, now: float
) -> Changed[JobRecord]:
    """Record an attempt *owner* made (``LeaseLost`` if the event is no longer its own)."""
    job = _leased(tx, job_id, owner)
    if job is None:
        raise LeaseLost(job_id)
    assert job.callback is not None
    callback = {
        **job.callback,
        "attempts": job.callback["attempts"] + 1,
        "last_status": result.status,
        "last_error": result.error,
        "owner": None,
        "lease_expires": None,
    }
    names: tuple[str, ...] = ()
    if job.callback.get("again"):  # sent again on request: one more attempt, now
        callback.update(state="pending", next_attempt_at=now, again=False, since=now)
        names = (DELIVERIES_KEY,)
    elif result.outcome == "retry":
        assert result.retry_at is not None
        callback.update(state="pending", next_attempt_at=result.retry_at)
    else:
        callback.update(state=result.outcome, next_attempt_at=None)
    return Changed(_set(tx, job, callback), names)


def release(tx: DeliveryTx, owner: str, job_ids: list[str], now: float) -> Changed[int]:
    """Hand back events whose attempt *owner* stopped (shutdown): due again at once, the cut
    attempt not counted."""
    released = 0
    for job_id in job_ids:
        job = _leased(tx, job_id, owner)
        if job is not None:
            assert job.callback is not None
            callback = {**job.callback, "owner": None, "lease_expires": None}
            callback["next_attempt_at"] = now
            _set(tx, job, callback)
            released += 1
    return Changed(released, (DELIVERIES_KEY,) if released else ())


def retry(tx: DeliveryTx, job_id: str, now: float) -> Changed[JobRecord]:
    """Send the job's event again (same ``webhook-id``), whatever its state: pending, due now,
    with a fresh ``retry_for``. An attempt in flight ends first (one at a time)."""
    job = tx.get_job(job_id)
    if job is None:
        raise NotFound(f"job not found: {job_id}", code="job_not_found")
    if job.callback is None:
        raise NotFound(f"job {job_id} has no callback", code="no_callback")
    if job.callback.get("id") is None:
        raise Conflict(
            f"job {job_id} has no event to send: it has not ended, or ended with an event "
            "its callback did not ask for",
            code="no_event",
        )
    callback = {**job.callback, "state": "pending"}
    in_flight = callback.get("owner") is not None and callback["lease_expires"] > now
    if in_flight:
        callback["again"] = True
    else:
        callback.update(owner=None, lease_expires=None, next_attempt_at=now, since=now)
    return Changed(_set(tx, job, callback), () if in_flight else (DELIVERIES_KEY,))

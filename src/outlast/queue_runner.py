"""One queue of a worker: its slots, its reservations and the loop that claims its jobs.

A :class:`QueueRunner` keeps at most ``concurrency`` jobs of its queue running. It does not run
them: it hands each claimed job to the worker's *launch* function, and the worker tells it when a
job's slot frees (:meth:`QueueRunner.slot_freed`). Leases, the heartbeat and shutdown are the
worker's (see :mod:`outlast.worker`).

Claiming ahead. A claim costs a store round trip (a group commit; a Redis round trip) between the
end of one job and the start of the next; with short jobs that is a large share of each slot's
time. So while a queue's jobs are short, its runner also reserves up to ``concurrency`` more jobs
while every slot is busy, and a slot that frees starts one of them at once. Reserved jobs stay
queued in the store (not running, not counted as running) and hidden from other claims; one not
started within :data:`RESERVE_USE` is handed back, and so is every one left when claiming stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from outlast.errors import StoreError
from outlast.health import Retry, StoreHealth
from outlast.models import JobRecord
from outlast.store.base import Store

log = logging.getLogger("outlast.worker")

# An idle claim loop re-checks the store at least this often, for jobs submitted by other
# processes (submissions in this process wake it at once).
IDLE_RECHECK = 1.0
# Jobs count as short when their attempts average at most this long: beyond it a round trip is
# noise, and holding jobs back from other nodes would cost more than it saves.
RESERVE_MAX_RUN = 0.25
# ... and at least this long. Shorter jobs (no-ops) keep the worker busy with its own work: its
# slots free in bulk and each claim takes many jobs, while a reservation and a start per job
# cost more than one claim.
RESERVE_MIN_RUN = 0.002
# A reservation not started within this long is handed back, so a busy node never sits on jobs
# that an idle one could run.
RESERVE_USE = 1.0
# The store hides a reserved job for this long (then anyone may claim it: the holder died, say).
# What it has over RESERVE_USE is the margin for clocks that differ between nodes.
RESERVE_HOLD = 5.0
# Weight of the newest attempt in a queue's average run time.
RUN_AVERAGE_WEIGHT = 0.2

# Runs a job this runner took: ``launch(record, reserved)``. A reserved job is still queued in
# the store; its start is written while it runs.
Launch = Callable[[JobRecord, bool], None]


@dataclass(slots=True)
class _Reserved:
    record: JobRecord  # as reserved: still queued, ``run_at`` when it became due
    use_by: float  # monotonic; handed back if not started by then


class QueueRunner:
    """Claims the jobs of one queue into at most ``concurrency`` slots (see the module doc)."""

    def __init__(
        self,
        queue: str,
        concurrency: int,
        *,
        store: Store,
        owner: str,
        lease: float,
        launch: Launch,
        stopping: asyncio.Event,
        health: StoreHealth,
    ) -> None:
        self.queue = queue
        self.concurrency = concurrency
        self.store = store
        self.owner = owner
        self.lease = lease
        self.launch = launch
        self.stopping = stopping
        self.health = health
        self.active = 0  # jobs of this queue running here
        self._slot_freed = asyncio.Event()
        self._reserved: deque[_Reserved] = deque()
        # Average seconds per attempt (None until one ended): whether to reserve.
        self._run_average: float | None = None

    # -- what the worker calls --------------------------------------------------------------

    async def run(self) -> None:
        """Claim until the worker stops claiming; then hand back what is reserved."""
        try:
            await self._claim_forever()
        finally:
            # Stopping (or a crash of this loop): jobs reserved and not started go back now
            # rather than when their hold ends.
            await self._unreserve(list(self._reserved))
            self._reserved.clear()

    def wake(self) -> None:
        """Look again now (the worker is stopping, say)."""
        self._slot_freed.set()

    def slot_freed(self) -> None:
        """A job of this queue is over: its slot takes a reserved job now, or wakes the loop."""
        self.active -= 1
        reserved = self._reserved
        if reserved and reserved[0].use_by > time.monotonic() and not self.stopping.is_set():
            # The next job starts now, not after the claim loop's turn (which comes after the
            # store's next group commit).
            self._start(reserved.popleft().record, reserved=True)
        self._slot_freed.set()  # the claim loop tops up its reservations, or claims

    def note_run_time(self, seconds: float) -> None:
        average = self._run_average
        self._run_average = (
            seconds if average is None else average + RUN_AVERAGE_WEIGHT * (seconds - average)
        )

    # -- the claim loop ---------------------------------------------------------------------

    async def _claim_forever(self) -> None:
        concurrency = self.concurrency
        slot_freed = self._slot_freed
        reserved = self._reserved
        retry = Retry()
        while not self.stopping.is_set():
            # Cleared before looking at the slots: a slot freed from here on wakes the wait.
            slot_freed.clear()
            if reserved:
                await self._start_reserved()
            free = concurrency - self.active
            ahead = self._ahead() - len(reserved)
            if free <= 0 and ahead <= 0:
                # stop_claiming sets this event too. A plain wait when nothing is reserved:
                # this is the busiest wait of a worker.
                use_within = self._use_within()
                if use_within is None:
                    await slot_freed.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(use_within):
                            await slot_freed.wait()
                continue
            watch = self.store.watch_queue(self.queue)  # before claiming: see its docstring
            try:
                if free > 0:
                    asked = free
                    claimed = await self.store.claim_jobs(self.queue, self.owner, free, self.lease)
                    for record in claimed:
                        self._start(record, reserved=False)
                    got = len(claimed)
                else:
                    asked = ahead
                    got = await self._reserve(ahead)
                due = None
                if got != asked and not self.stopping.is_set():
                    due = await self.store.next_due(self.queue)
            except StoreError as exc:
                # Not a line per failure: the health says it once, and the waits grow.
                self.health.failed(f"claim on {self.queue}", exc)
                await self._pause(None, retry.failed())
                continue
            retry.succeeded()
            self.health.succeeded("claim")
            if got == asked or self.stopping.is_set():
                continue
            wait = IDLE_RECHECK if due is None else min(IDLE_RECHECK, due - time.time())
            if reserved:
                wait = min(wait, self._use_within() or 0.0)
            if wait > 0:
                # Reserved jobs start as soon as a slot frees; otherwise a freed slot waits for
                # a job to come (a claim now would find none).
                await self._pause(watch, wait, slot_freed if reserved else None)

    def _start(self, record: JobRecord, *, reserved: bool) -> None:
        self.active += 1
        self.launch(record, reserved)

    def _ahead(self) -> int:
        """How many jobs to hold reserved: a slot's worth each while jobs are short."""
        average = self._run_average
        short = average is not None and RESERVE_MIN_RUN <= average <= RESERVE_MAX_RUN
        return self.concurrency if short else 0

    def _use_within(self) -> float | None:
        """Seconds until the oldest reservation must be handed back (None: none)."""
        reserved = self._reserved
        return max(0.0, reserved[0].use_by - time.monotonic()) if reserved else None

    async def _reserve(self, limit: int) -> int:
        held = await self.store.reserve_jobs(self.queue, self.owner, limit, RESERVE_HOLD)
        use_by = time.monotonic() + RESERVE_USE
        self._reserved.extend(_Reserved(record, use_by) for record in held)
        return len(held)

    async def _start_reserved(self) -> None:
        """Start reserved jobs in the free slots; hand back those kept too long."""
        reserved = self._reserved
        now = time.monotonic()
        stale: list[_Reserved] = []
        while reserved and (reserved[0].use_by <= now or self.active < self.concurrency):
            item = reserved.popleft()
            if item.use_by <= now or self.stopping.is_set():
                stale.append(item)
            else:
                self._start(item.record, reserved=True)
        if stale:
            await self._unreserve(stale)

    async def _unreserve(self, items: list[_Reserved]) -> None:
        if not items:
            return
        held = [(item.record.id, item.record.run_at) for item in items]
        try:
            await self.store.unreserve_jobs(self.owner, held)
        except StoreError as exc:
            # Not lost: their hold ends within RESERVE_HOLD and any worker may claim them.
            log.warning(
                "could not hand back %d reserved jobs of %s: %s", len(held), self.queue, exc
            )

    async def _pause(
        self, event: asyncio.Event | None, timeout: float, also: asyncio.Event | None = None
    ) -> None:
        """Wait *timeout* seconds at most, ending early when an event is set or claiming stops."""
        events = [e for e in (event, also) if e is not None]
        events.append(self.stopping)
        waits = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

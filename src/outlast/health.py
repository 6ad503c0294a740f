"""Whether the store answers, as the loops that talk to it find out, and how they back off.

Every loop of a worker that calls the store (the claim loops, the heartbeat, maintenance) reports
each call's fate to one :class:`StoreHealth` per process. While calls fail the loops wait longer
and longer (:class:`Retry`), ``/readyz`` answers 503, and the log says so once when the store
goes away, then once per :data:`SUMMARY_EVERY` with the count of failed calls, and once when it
is back: an outage is three lines and a few summaries, not a line per failed call.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

log = logging.getLogger("outlast.store")

# Waits between calls to a store that keeps failing: exponential from RETRY_BASE, capped at
# RETRY_CAP, each jittered (0.5-1.0) so that the loops and nodes of a cluster do not all come
# back at the same instant.
RETRY_BASE = 0.1
RETRY_CAP = 5.0
# While the store stays unreachable, one line says how many calls failed in this long.
SUMMARY_EVERY = 30.0


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds before retry number *attempt*: exponential, capped, with jitter (0.5-1.0)."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)) * random.uniform(0.5, 1.0))


class Retry:
    """One loop's back-off: how long to wait after each failure in a row."""

    __slots__ = ("base", "cap", "failures")

    def __init__(self, base: float = RETRY_BASE, cap: float = RETRY_CAP) -> None:
        self.base = base
        self.cap = cap
        self.failures = 0

    def failed(self) -> float:
        """One more failure in a row: the seconds to wait before the next call."""
        self.failures += 1
        return backoff(self.failures, self.base, self.cap)

    def succeeded(self) -> None:
        self.failures = 0


class StoreHealth:
    """The store as this process's loops see it: reachable, or failing since when."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._down_since: float | None = None
        self._failures = 0  # since the store went away
        self._summarised = 0  # failures already counted by a summary line
        self._next_summary = 0.0

    @property
    def reachable(self) -> bool:
        return self._down_since is None

    def failed(self, doing: str, exc: BaseException) -> None:
        """A call to the store failed; *doing* says which (``claim on default``)."""
        now = self._clock()
        self._failures += 1
        if self._down_since is None:
            self._down_since = now
            self._next_summary = now + SUMMARY_EVERY
            log.warning("store unreachable (%s): %s", doing, exc)
        elif now >= self._next_summary:
            self._next_summary = now + SUMMARY_EVERY
            log.warning(
                "store still unreachable after %.0f s: %d failed calls in the last %.0f s (%s): %s",
                now - self._down_since,
                self._failures - self._summarised,
                SUMMARY_EVERY,
                doing,
                exc,
            )
            self._summarised = self._failures

    def succeeded(self, doing: str) -> None:
        """A call to the store succeeded. Cheap when nothing changes: called on every claim."""
        if self._down_since is None:
            return
        log.warning(
            "store reachable again (%s) after %.1f s (%d failed calls)",
            doing,
            self._clock() - self._down_since,
            self._failures,
        )
        self._down_since = None
        self._failures = self._summarised = 0

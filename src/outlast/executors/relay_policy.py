"""The relay's retry and wait policy: which upstream answers are worth another attempt, how long
an upstream asks to wait, and what a broken stream means for the job (retried, resuming after
the last event id, or ``interrupted``)."""

from __future__ import annotations

import contextlib
import re
import time
from email.utils import parsedate_to_datetime

import httpx

from outlast.config import RelaySettings
from outlast.executors import TaskFailure
from outlast.executors.relay_progress import Progress

# Statuses that mean "not now": with a delay the upstream names, the relay waits that long.
RATE_LIMIT_STATUSES = frozenset({429, 503})
# 4xx answers worth another attempt; any other 4xx will not change by asking again.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|h|m|s)")
# How long a limited upstream's call counts as running at most, should its worker vanish.
RELAY_HOLD = 600.0


class _Silent(Exception):
    """The upstream sent nothing for longer than ``idle_timeout``."""


def parse_duration(text: str) -> float | None:
    """OpenAI's reset durations: "6m0s", "1.5s", "20ms", "1h2m3s"; ``None`` if not one."""
    text = text.strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def retry_delay(headers: httpx.Headers, now: float | None = None) -> float | None:
    """Seconds the upstream asks to wait: ``Retry-After`` (seconds or an HTTP date), or
    OpenAI's ``x-ratelimit-reset-requests`` / ``-tokens`` (the longer); ``None``: not said."""
    delays: list[float] = []
    raw = headers.get("retry-after")
    if raw is not None:
        raw = raw.strip()
        try:
            delays.append(float(raw))
        except ValueError:
            with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
                when = parsedate_to_datetime(raw).timestamp()
                delays.append(when - (time.time() if now is None else now))
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        value = headers.get(name)
        parsed = None if value is None else parse_duration(value)
        if parsed is not None:
            delays.append(parsed)
    finite = [d for d in delays if d == d and d != float("inf")]
    return max(0.0, max(finite)) if finite else None


def transport_failure(
    exc: httpx.HTTPError | _Silent, progress: Progress, relay: RelaySettings
) -> TaskFailure:
    if isinstance(exc, _Silent | httpx.ReadTimeout):
        what = f"the upstream was silent for more than {relay.idle_timeout:g} s (idle_timeout)"
    elif isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        what = (
            f"connecting to the upstream took more than {relay.connect_timeout:g} s "
            "(connect_timeout)"
        )
    elif isinstance(exc, httpx.ConnectError):
        what = f"cannot connect to the upstream: {exc or 'connection refused'}"
    elif isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        what = f"the upstream connection broke: {exc or type(exc).__name__}"
    else:
        what = f"{type(exc).__name__}: {exc}"
    return after_break(what, progress)


def after_break(what: str, progress: Progress) -> TaskFailure:
    """The failure for a stream that broke after *progress*: retried (resuming after the last
    id) when it can be, ``interrupted`` when events were stored without ids to resume from."""
    if progress.events and progress.last_id is None:
        return TaskFailure(
            "interrupted",
            f"{what}, after {progress.events} events without ids to resume from",
            retryable=False,
        )
    if progress.events:
        what += f", after {progress.events} events (a retry resumes after id {progress.last_id})"
    return TaskFailure("upstream_error", what)

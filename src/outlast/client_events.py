"""The rules of the clients' event iterator, without I/O: where to resume, when the job is over,
what to make of an answer, and how long to back off before reconnecting.

:class:`EventStream` is driven by :meth:`outlast.Client.events` and
:meth:`outlast.AsyncClient.events` alike, which only open the connection, read its chunks and
sleep; so both iterators behave the same way.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import quote

import httpx

from outlast.client_types import (
    APIError,
    ClientError,
    InvalidResponse,
    JobEvent,
    ServerUnreachable,
    api_error,
    unreachable,
)
from outlast.sse import SSEDecoder, SSEEvent, SSELimitError

# Answers worth retrying the event stream on: a draining server (503), a proxy in front of a
# restarting one (502, 504) and, for good measure, a full queue (429).
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
# What a connection of the event iterator may end with and still be retried (or turned into a
# clearer error) by :meth:`EventStream.failure`.
CONNECTION_ERRORS = (httpx.TransportError, APIError, SSELimitError)


@dataclass(frozen=True, slots=True)
class Reconnect:
    """How :meth:`Client.events` reconnects: exponential backoff with jitter from ``initial`` to
    ``maximum`` seconds (a server's ``Retry-After`` is honoured up to ``maximum``); it gives up,
    raising the last error, after ``give_up_after`` seconds without receiving an event."""

    initial: float = 0.1
    maximum: float = 5.0
    give_up_after: float = 120.0


def job_path(job_id: str, suffix: str = "") -> str:
    # Quoted whole: an id from user input can never reach another route.
    return f"/v1/jobs/{quote(job_id, safe='')}{suffix}"


class Resume:
    """Where the event iterator stands: the last offset delivered, whether the job is over, and
    how long to wait before the next connection."""

    def __init__(
        self,
        offset: str | None,
        policy: Reconnect,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.offset = offset
        self.finished = False
        self._policy = policy
        self._clock = clock
        self._delay = 0.0
        self._stalled_since: float | None = None

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.offset is not None:
            # The server resumes right after this offset: no gap and no duplicate.
            headers["Last-Event-ID"] = self.offset
        return headers

    def deliver(self, sse: SSEEvent) -> JobEvent:
        # Every event the server sends has an id; an event without one (which only a foreign
        # server would send) keeps the previous offset, so a resume repeats nothing delivered.
        offset = sse.id if sse.id is not None else (self.offset or "-1")
        event = JobEvent.from_sse(sse, offset)
        self.offset = offset
        self.finished = event.ends_job
        self._delay = 0.0
        self._stalled_since = None
        return event

    def backoff(self, cause: ClientError, retry_after: float | None = None) -> float:
        """Seconds to wait before reconnecting after *cause*; raises *cause* once the iterator
        has gone ``give_up_after`` seconds without an event."""
        now = self._clock()
        if self._stalled_since is None:
            self._stalled_since = now
        elif now - self._stalled_since >= self._policy.give_up_after:
            raise cause
        policy = self._policy
        self._delay = min(max(self._delay * 2, policy.initial), policy.maximum)
        # Jitter spreads the reconnects of many readers after a restart.
        delay = self._delay * random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, policy.maximum))
        return delay


class EventStream(Resume):
    """One run of the event iterator over the job *job_id* of the server at *url*. Per
    connection the client calls :meth:`opened` with the answer (its body read first when
    :meth:`refused`), :meth:`feed` with each chunk, :meth:`ended` at a clean end, and on an
    exception of :data:`CONNECTION_ERRORS`, :meth:`failure`; then it sleeps for :meth:`backoff`
    of the cause, unless the job is :attr:`finished`."""

    def __init__(self, url: str, job_id: str, offset: str | None, policy: Reconnect) -> None:
        super().__init__(offset, policy)
        self.url = url
        self.job_id = job_id
        self.path = job_path(job_id, "/events")
        self._decoder = SSEDecoder()

    @staticmethod
    def refused(response: httpx.Response) -> bool:
        """Whether *response* is an error, whose body is to be read before :meth:`opened`."""
        return response.status_code >= 400

    def opened(self, response: httpx.Response) -> bool:
        """Whether *response* is an event stream to read: ``False`` for a ``204`` (everything
        was sent before); an error answer is raised as its :class:`APIError`."""
        if response.status_code == 204:
            return False
        if self.refused(response):
            raise api_error(response)
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith("text/event-stream"):
            raise InvalidResponse(
                f"expected an event stream, got {content_type or 'no content type'}"
            )
        self._decoder = SSEDecoder()
        return True

    def feed(self, chunk: bytes) -> Iterator[JobEvent]:
        """The events *chunk* completes, up to the one that ends the job."""
        for sse in self._decoder.feed(chunk):
            yield self.deliver(sse)
            if self.finished:
                return

    def ended(self) -> ServerUnreachable:
        """The cause to back off on after the stream ended cleanly before the job did."""
        # A clean end also ends an unfinished last event: it is dropped, and the resume repeats
        # it whole.
        self._decoder.close()
        return ServerUnreachable(f"the event stream from {self.url} ended before the job did")

    def failure(self, exc: Exception) -> tuple[ClientError, float | None]:
        """The cause to back off on after *exc* (one of :data:`CONNECTION_ERRORS`), with the
        server's ``Retry-After``; raises what is not worth a retry."""
        if isinstance(exc, httpx.TransportError):
            return unreachable(self.url, exc), None
        if isinstance(exc, APIError):
            if exc.status not in RETRYABLE_STATUS:
                raise exc
            return exc, exc.retry_after
        raise InvalidResponse(f"event stream of {self.job_id}: {exc}") from exc

"""Clients for an outlast server, on httpx: :class:`Client` (blocking) and :class:`AsyncClient`.

::

    import outlast

    with outlast.Client("http://127.0.0.1:8787") as client:
        job = client.submit("summarize", {"text": "..."})
        for event in client.events(job.id):  # resumes by itself after a dropped connection
            if event.type == "output":
                print(event.message["data"])
        job = client.get(job.id)

The two clients differ only in their I/O. Building requests and reading answers are plain
functions (the answers and errors are in :mod:`outlast.client_types`), and the rules of the
event iterator (where to resume, when the job is over, how long to back off) live in
:class:`_Resume`, so both iterators behave the same way.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx

from outlast.client_types import (
    APIError,
    AuthError,
    BatchResult,
    ClientError,
    InvalidResponse,
    JobEvent,
    JobInfo,
    JobNotFound,
    JobPage,
    RequestRejected,
    ServerBusy,
    ServerUnreachable,
    api_error,
    json_body,
    unreachable,
)
from outlast.models import JobState
from outlast.sse import SSEDecoder, SSEEvent, SSELimitError

__all__ = [
    "APIError",
    "AsyncClient",
    "AuthError",
    "BatchResult",
    "Client",
    "ClientError",
    "InvalidResponse",
    "JobEvent",
    "JobInfo",
    "JobNotFound",
    "JobPage",
    "Reconnect",
    "RequestRejected",
    "ServerBusy",
    "ServerUnreachable",
]

DEFAULT_URL = "http://127.0.0.1:8787"
URL_ENV = "OUTLAST_URL"
TOKEN_ENV = "OUTLAST_TOKEN"
# Seconds for an ordinary request (long-polls get their wait on top).
DEFAULT_TIMEOUT = 30.0
# The server sends a ": ping" line every 15 s by default; four missed pings mean the
# connection is dead even if TCP has not noticed, so the iterator reconnects.
DEFAULT_IDLE_TIMEOUT = 60.0
# The server caps ?wait= (jobs.max_wait); asking for longer just returns sooner.
WAIT_SLICE = 30.0
# Answers worth retrying the event stream on: a draining server (503), a proxy in front of a
# restarting one (502, 504) and, for good measure, a full queue (429).
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
USER_AGENT = "outlast-client"
# The most jobs one batch request holds (the server's limit); submit_many sends more in parts.
MAX_BATCH = 1000
BATCH_PATH = "/v1/jobs/batch"


# -- the event iterator's rules ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reconnect:
    """How :meth:`Client.events` reconnects: exponential backoff with jitter from ``initial`` to
    ``maximum`` seconds (a server's ``Retry-After`` is honoured up to ``maximum``); it gives up,
    raising the last error, after ``give_up_after`` seconds without receiving an event."""

    initial: float = 0.1
    maximum: float = 5.0
    give_up_after: float = 120.0


class _Resume:
    """Where the event iterator stands: the last offset delivered, whether the job is over, and
    how long to wait before the next connection. No I/O: both clients drive it."""

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


def _check_stream(response: httpx.Response) -> None:
    content_type = response.headers.get("content-type", "")
    if not content_type.startswith("text/event-stream"):
        raise InvalidResponse(f"expected an event stream, got {content_type or 'no content type'}")


def _ended_early(url: str) -> ServerUnreachable:
    return ServerUnreachable(f"the event stream from {url} ended before the job did")


# -- shared set-up --------------------------------------------------------------------------


def _settings(url: str | None, token: str | None) -> tuple[str, dict[str, str]]:
    base = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ClientError(f"the server URL must start with http:// or https://, not {base!r}")
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    token = token if token is not None else os.environ.get(TOKEN_ENV)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return base, headers


def _job_path(job_id: str, suffix: str = "") -> str:
    # Quoted whole: an id from user input can never reach another route.
    return f"/v1/jobs/{quote(job_id, safe='')}{suffix}"


def _submission(
    task: str,
    input: Any,
    queue: str | None,
    timeout: float | None,
    retries: int | None,
    delay: float | None,
    key: str | None,
    callback: str | dict[str, Any] | None = None,
    priority: int | None = None,
    concurrency_key: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"task": task}
    optional = {
        "input": input,
        "queue": queue,
        "timeout": timeout,
        "retries": retries,
        "delay": delay,
        "key": key,
        "callback": callback,
        "priority": priority,
        "concurrency_key": concurrency_key,
    }
    body.update({name: value for name, value in optional.items() if value is not None})
    return body


def _batches(jobs: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """*jobs* (submission bodies, as ``POST /v1/jobs`` takes them) in requests of *size*."""
    if not 1 <= size <= MAX_BATCH:
        raise ValueError(f"batch_size must be from 1 to {MAX_BATCH}")
    part: list[dict[str, Any]] = []
    for job in jobs:
        if not isinstance(job, dict):
            raise TypeError(f"each job is a dict such as {{'task': ...}}, not {type(job).__name__}")
        part.append(job)
        if len(part) == size:
            yield part
            part = []
    if part:
        yield part


def _queue_path(queue: str, action: str) -> str:
    return f"/v1/queues/{quote(queue, safe='')}/{action}"


def _queues(body: Any) -> list[dict[str, Any]]:
    queues = body.get("queues") if isinstance(body, dict) else None
    if not isinstance(queues, list):
        raise InvalidResponse('expected {"queues": [...]}')
    return queues


def _filters(**params: Any) -> dict[str, Any]:
    return {name: value for name, value in params.items() if value is not None}


def _wait_param(wait: float | None) -> str | None:
    """``?wait=`` as the server reads it: plain decimal seconds (no exponent, at most 9
    decimals), never ``repr`` of a float such as ``29.998731851577759`` or ``1e-05``."""
    return None if wait is None else f"{max(0.0, wait):.3f}"


class _Base:
    def __init__(
        self,
        url: str | None,
        token: str | None,
        timeout: float,
        idle_timeout: float,
        reconnect: Reconnect | None,
    ) -> None:
        self.url, self._headers = _settings(url, token)
        self.timeout = timeout
        self.reconnect = reconnect or Reconnect()
        # Reading events: a long read timeout (keepalives arrive every few seconds), the
        # ordinary one for connecting.
        self._stream_timeout = httpx.Timeout(timeout, read=idle_timeout)

    def _wait_timeout(self, wait: float | None) -> float:
        return self.timeout + (wait or 0.0)


# -- the blocking client --------------------------------------------------------------------


class Client(_Base):
    """A blocking client. ``url`` defaults to ``$OUTLAST_URL`` or ``http://127.0.0.1:8787``,
    ``token`` to ``$OUTLAST_TOKEN``. Pass ``transport`` to test against an
    ``httpx.MockTransport``."""

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        reconnect: Reconnect | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, token, timeout, idle_timeout, reconnect)
        self._http = httpx.Client(
            base_url=self.url, headers=self._headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
        return json_body(response)

    def submit(
        self,
        task: str,
        input: Any = None,
        *,
        queue: str | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        delay: float | None = None,
        key: str | None = None,
        callback: str | dict[str, Any] | None = None,
        priority: int | None = None,
        concurrency_key: str | None = None,
    ) -> JobInfo:
        """Submit a job; returns it as accepted (``queued``). With a ``key`` used before, the
        existing job comes back instead of a new one. ``callback``: a URL the server posts the
        job's end to (or ``{"url": ..., "events": [...]}``), signed; receivers check it with
        :func:`outlast.webhooks.verify` (docs/webhooks.md). ``priority`` and
        ``concurrency_key``: see docs/flow-control.md."""
        body = _submission(
            task, input, queue, timeout, retries, delay, key, callback, priority, concurrency_key
        )
        return JobInfo.from_json(self._request("POST", "/v1/jobs", json=body))

    def submit_many(
        self,
        jobs: Iterable[dict[str, Any]],
        *,
        batch_size: int = MAX_BATCH,
        on_batch: Callable[[list[BatchResult]], None] | None = None,
    ) -> list[BatchResult]:
        """Submit *jobs* (each a dict with the fields of :meth:`submit`: ``task``, ``input``,
        ``queue``, ``key``, ...) in batches: each request of up to *batch_size* jobs is one
        commit on the server, and each job is admitted or refused on its own, in order. One
        :class:`BatchResult` per job, in the order given; a refused job's ``error`` is not
        raised. Raises only when a whole request is refused (malformed, too large, or the
        server draining): the batches before it were submitted, and *on_batch*, called with
        each request's results as they come, has seen them."""
        results: list[BatchResult] = []
        for part in _batches(jobs, batch_size):
            body = self._request("POST", BATCH_PATH, json={"jobs": part})
            done = BatchResult.list_from_json(body, len(part), len(results))
            results.extend(done)
            if on_batch is not None:
                on_batch(done)
        return results

    def get(self, job_id: str, *, wait: float | None = None) -> JobInfo:
        """The job; with ``wait``, the server holds the answer up to that many seconds (it caps
        them) until the job is terminal."""
        params = _filters(wait=_wait_param(wait))
        timeout = self._wait_timeout(wait)
        return JobInfo.from_json(
            self._request("GET", _job_path(job_id), params=params, timeout=timeout)
        )

    def wait(self, job_id: str, *, timeout: float | None = None) -> JobInfo:
        """Long-poll until the job is terminal, or ``timeout`` seconds passed (then the job is
        returned as it is: check :attr:`JobInfo.terminal`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = WAIT_SLICE if deadline is None else deadline - time.monotonic()
            job = self.get(job_id, wait=max(0.0, min(WAIT_SLICE, remaining)))
            if job.terminal or remaining <= 0:
                return job

    def cancel(self, job_id: str) -> JobInfo:
        """Cancel the job (idempotent). A running job stops within a second; a terminal one
        comes back as it is."""
        return JobInfo.from_json(self._request("POST", _job_path(job_id, "/cancel")))

    def retry(self, job_id: str) -> JobInfo:
        """A failed or cancelled job again, as a new job (its ``retry_of`` names this one)."""
        return JobInfo.from_json(self._request("POST", _job_path(job_id, "/retry")))

    def queues(self) -> list[dict[str, Any]]:
        """Every configured queue: its settings, job counts and whether it is paused."""
        return _queues(self._request("GET", "/v1/queues"))

    def pause(self, queue: str) -> dict[str, Any]:
        """Pause a queue: jobs are still admitted, none starts until :meth:`resume`."""
        body: dict[str, Any] = self._request("POST", _queue_path(queue, "pause"))
        return body

    def resume(self, queue: str) -> dict[str, Any]:
        body: dict[str, Any] = self._request("POST", _queue_path(queue, "resume"))
        return body

    def list(
        self,
        *,
        state: JobState | str | None = None,
        queue: str | None = None,
        task: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobPage:
        """One page of jobs, newest first."""
        params = _filters(state=state, queue=queue, task=task, limit=limit, cursor=cursor)
        return JobPage.from_json(self._request("GET", "/v1/jobs", params=params))

    def iter_jobs(
        self,
        *,
        state: JobState | str | None = None,
        queue: str | None = None,
        task: str | None = None,
        page_size: int = 100,
    ) -> Iterator[JobInfo]:
        """Every job that matches, newest first, fetching page after page as needed."""
        cursor: str | None = None
        while True:
            page = self.list(state=state, queue=queue, task=task, limit=page_size, cursor=cursor)
            yield from page.jobs
            if page.next is None:
                return
            cursor = page.next

    def events(self, job_id: str, *, offset: str | None = None) -> Iterator[JobEvent]:
        """The job's events from ``offset`` (from the start without it) until its end.

        A dropped connection, a server restart or a ``503`` is retried with backoff, resuming
        right after the last event delivered: no gap and no duplicate. The iterator stops after
        the job's terminal state (or at once for a job already over and fully read).
        """
        resume = _Resume(offset, self.reconnect)
        path = _job_path(job_id, "/events")
        while not resume.finished:
            retry_after: float | None = None
            try:
                with self._http.stream(
                    "GET", path, headers=resume.headers(), timeout=self._stream_timeout
                ) as response:
                    if response.status_code == 204:
                        return  # everything was sent before
                    if response.status_code >= 400:
                        response.read()
                        raise api_error(response)
                    _check_stream(response)
                    decoder = SSEDecoder()
                    for chunk in response.iter_bytes():
                        for sse in decoder.feed(chunk):
                            yield resume.deliver(sse)
                            if resume.finished:
                                return
                    # A clean end also ends an unfinished last event: it is dropped, and the
                    # resume below repeats it whole.
                    decoder.close()
                cause: ClientError = _ended_early(self.url)
            except httpx.TransportError as exc:
                cause = unreachable(self.url, exc)
            except APIError as exc:
                if exc.status not in RETRYABLE_STATUS:
                    raise
                cause, retry_after = exc, exc.retry_after
            except SSELimitError as exc:
                raise InvalidResponse(f"event stream of {job_id}: {exc}") from exc
            time.sleep(resume.backoff(cause, retry_after))


# -- the async client -----------------------------------------------------------------------


class AsyncClient(_Base):
    """The asyncio twin of :class:`Client`: the same methods, awaited; :meth:`events` is an
    async iterator."""

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        reconnect: Reconnect | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, token, timeout, idle_timeout, reconnect)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self._headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
        return json_body(response)

    async def submit(
        self,
        task: str,
        input: Any = None,
        *,
        queue: str | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        delay: float | None = None,
        key: str | None = None,
        callback: str | dict[str, Any] | None = None,
        priority: int | None = None,
        concurrency_key: str | None = None,
    ) -> JobInfo:
        """See :meth:`Client.submit`."""
        body = _submission(
            task, input, queue, timeout, retries, delay, key, callback, priority, concurrency_key
        )
        return JobInfo.from_json(await self._request("POST", "/v1/jobs", json=body))

    async def submit_many(
        self,
        jobs: Iterable[dict[str, Any]],
        *,
        batch_size: int = MAX_BATCH,
        on_batch: Callable[[list[BatchResult]], None] | None = None,
    ) -> list[BatchResult]:
        """As :meth:`Client.submit_many`."""
        results: list[BatchResult] = []
        for part in _batches(jobs, batch_size):
            body = await self._request("POST", BATCH_PATH, json={"jobs": part})
            done = BatchResult.list_from_json(body, len(part), len(results))
            results.extend(done)
            if on_batch is not None:
                on_batch(done)
        return results

    async def get(self, job_id: str, *, wait: float | None = None) -> JobInfo:
        """See :meth:`Client.get`."""
        params = _filters(wait=_wait_param(wait))
        timeout = self._wait_timeout(wait)
        return JobInfo.from_json(
            await self._request("GET", _job_path(job_id), params=params, timeout=timeout)
        )

    async def wait(self, job_id: str, *, timeout: float | None = None) -> JobInfo:
        """See :meth:`Client.wait`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = WAIT_SLICE if deadline is None else deadline - time.monotonic()
            job = await self.get(job_id, wait=max(0.0, min(WAIT_SLICE, remaining)))
            if job.terminal or remaining <= 0:
                return job

    async def cancel(self, job_id: str) -> JobInfo:
        """See :meth:`Client.cancel`."""
        return JobInfo.from_json(await self._request("POST", _job_path(job_id, "/cancel")))

    async def retry(self, job_id: str) -> JobInfo:
        """See :meth:`Client.retry`."""
        return JobInfo.from_json(await self._request("POST", _job_path(job_id, "/retry")))

    async def queues(self) -> list[dict[str, Any]]:
        """See :meth:`Client.queues`."""
        return _queues(await self._request("GET", "/v1/queues"))

    async def pause(self, queue: str) -> dict[str, Any]:
        """See :meth:`Client.pause`."""
        body: dict[str, Any] = await self._request("POST", _queue_path(queue, "pause"))
        return body

    async def resume(self, queue: str) -> dict[str, Any]:
        """See :meth:`Client.resume`."""
        body: dict[str, Any] = await self._request("POST", _queue_path(queue, "resume"))
        return body

    async def list(
        self,
        *,
        state: JobState | str | None = None,
        queue: str | None = None,
        task: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobPage:
        """See :meth:`Client.list`."""
        params = _filters(state=state, queue=queue, task=task, limit=limit, cursor=cursor)
        return JobPage.from_json(await self._request("GET", "/v1/jobs", params=params))

    async def iter_jobs(
        self,
        *,
        state: JobState | str | None = None,
        queue: str | None = None,
        task: str | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[JobInfo]:
        """See :meth:`Client.iter_jobs`."""
        cursor: str | None = None
        while True:
            page = await self.list(
                state=state, queue=queue, task=task, limit=page_size, cursor=cursor
            )
            for job in page.jobs:
                yield job
            if page.next is None:
                return
            cursor = page.next

    async def events(self, job_id: str, *, offset: str | None = None) -> AsyncIterator[JobEvent]:
        """See :meth:`Client.events`."""
        resume = _Resume(offset, self.reconnect)
        path = _job_path(job_id, "/events")
        while not resume.finished:
            retry_after: float | None = None
            try:
                async with self._http.stream(
                    "GET", path, headers=resume.headers(), timeout=self._stream_timeout
                ) as response:
                    if response.status_code == 204:
                        return
                    if response.status_code >= 400:
                        await response.aread()
                        raise api_error(response)
                    _check_stream(response)
                    decoder = SSEDecoder()
                    async for chunk in response.aiter_bytes():
                        for sse in decoder.feed(chunk):
                            yield resume.deliver(sse)
                            if resume.finished:
                                return
                    decoder.close()
                cause: ClientError = _ended_early(self.url)
            except httpx.TransportError as exc:
                cause = unreachable(self.url, exc)
            except APIError as exc:
                if exc.status not in RETRYABLE_STATUS:
                    raise
                cause, retry_after = exc, exc.retry_after
            except SSELimitError as exc:
                raise InvalidResponse(f"event stream of {job_id}: {exc}") from exc
            await asyncio.sleep(resume.backoff(cause, retry_after))

"""Clients for an outlast server, on httpx: :class:`Client` (blocking) and :class:`AsyncClient`.

::

    import outlast

    with outlast.Client("http://127.0.0.1:8787") as client:
        job = client.submit("summarize", {"text": "..."})
        for event in client.events(job.id):  # resumes by itself after a dropped connection
            if event.type == "output":
                print(event.message["data"])
        job = client.get(job.id)

The two clients differ only in their I/O. What each method sends and how it reads the answers
is in :mod:`outlast.client_calls` (the answers and errors are in :mod:`outlast.client_types`),
and the rules of the event iterator (where to resume, when the job is over, how long to back
off) in :mod:`outlast.client_events`, so both clients behave the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import httpx

from outlast import client_calls as calls

# The names "X as X" stay importable from here, as before they moved.
from outlast.client_calls import BATCH_PATH as BATCH_PATH
from outlast.client_calls import DEFAULT_IDLE_TIMEOUT, DEFAULT_TIMEOUT, MAX_BATCH, Call, Plan
from outlast.client_calls import DEFAULT_URL as DEFAULT_URL
from outlast.client_calls import TOKEN_ENV as TOKEN_ENV
from outlast.client_calls import URL_ENV as URL_ENV
from outlast.client_calls import USER_AGENT as USER_AGENT
from outlast.client_calls import WAIT_SLICE as WAIT_SLICE
from outlast.client_events import CONNECTION_ERRORS, EventStream, Reconnect
from outlast.client_events import RETRYABLE_STATUS as RETRYABLE_STATUS
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
    json_body,
    unreachable,
)
from outlast.models import JobState

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

T = TypeVar("T")
_Transport = TypeVar("_Transport", httpx.BaseTransport, httpx.AsyncBaseTransport)
_Http = TypeVar("_Http", httpx.Client, httpx.AsyncClient)


class _Base(Generic[_Transport, _Http]):
    """The set-up both clients share; each makes its own httpx client in :meth:`_connect`."""

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        reconnect: Reconnect | None = None,
        transport: _Transport | None = None,
    ) -> None:
        self.url, self._headers = calls.settings(url, token)
        self.timeout = timeout
        self.reconnect = reconnect or Reconnect()
        # Reading events: a long read timeout (keepalives arrive every few seconds), the
        # ordinary one for connecting.
        self._stream_timeout = httpx.Timeout(timeout, read=idle_timeout)
        self._http: _Http = self._connect(transport)

    def _connect(self, transport: _Transport | None) -> _Http:
        raise NotImplementedError


# -- the blocking client --------------------------------------------------------------------


class Client(_Base[httpx.BaseTransport, httpx.Client]):
    """A blocking client. ``url`` defaults to ``$OUTLAST_URL`` or ``http://127.0.0.1:8787``,
    ``token`` to ``$OUTLAST_TOKEN``. Pass ``transport`` to test against an
    ``httpx.MockTransport``."""

    def _connect(self, transport: httpx.BaseTransport | None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers=self._headers, timeout=self.timeout, transport=transport
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

    def _request(self, call: Call) -> Any:
        try:
            response = self._http.request(call.method, call.path, **call.options())
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
        return json_body(response)

    def _run(self, plan: Plan[T]) -> T:
        answer = None
        while (call := plan.send(answer)) is not None:
            answer = self._request(call)
        return plan.result

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
        body = calls.submission(
            task, input, queue, timeout, retries, delay, key, callback, priority, concurrency_key
        )
        return self._run(Plan(calls.submit(body)))

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
        return self._run(Plan(calls.submit_many(jobs, batch_size, on_batch)))

    def get(self, job_id: str, *, wait: float | None = None) -> JobInfo:
        """The job; with ``wait``, the server holds the answer up to that many seconds (it caps
        them) until the job is terminal."""
        return self._run(Plan(calls.get(job_id, wait, self.timeout)))

    def wait(self, job_id: str, *, timeout: float | None = None) -> JobInfo:
        """Long-poll until the job is terminal, or ``timeout`` seconds passed (then the job is
        returned as it is: check :attr:`JobInfo.terminal`)."""
        return self._run(Plan(calls.wait(job_id, timeout, self.timeout)))

    def cancel(self, job_id: str) -> JobInfo:
        """Cancel the job (idempotent). A running job stops within a second; a terminal one
        comes back as it is."""
        return self._run(Plan(calls.job_action(job_id, "cancel")))

    def retry(self, job_id: str) -> JobInfo:
        """A failed or cancelled job again, as a new job (its ``retry_of`` names this one)."""
        return self._run(Plan(calls.job_action(job_id, "retry")))

    def queues(self) -> list[dict[str, Any]]:
        """Every configured queue: its settings, job counts and whether it is paused."""
        return self._run(Plan(calls.queues()))

    def pause(self, queue: str) -> dict[str, Any]:
        """Pause a queue: jobs are still admitted, none starts until :meth:`resume`."""
        return self._run(Plan(calls.queue_action(queue, "pause")))

    def resume(self, queue: str) -> dict[str, Any]:
        return self._run(Plan(calls.queue_action(queue, "resume")))

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
        call = calls.list_call(state, queue, task, limit, cursor)
        return self._run(Plan(calls.list_jobs(call)))

    def iter_jobs(
        self,
        *,
        state: JobState | str | None = None,
        queue: str | None = None,
        task: str | None = None,
        page_size: int = 100,
    ) -> Iterator[JobInfo]:
        """Every job that matches, newest first, fetching page after page as needed."""
        pages = calls.Pages(state, queue, task, page_size)
        while (call := pages.next_call()) is not None:
            yield from pages.read(self._request(call))

    def events(self, job_id: str, *, offset: str | None = None) -> Iterator[JobEvent]:
        """The job's events from ``offset`` (from the start without it) until its end.

        A dropped connection, a server restart or a ``503`` is retried with backoff, resuming
        right after the last event delivered: no gap and no duplicate. The iterator stops after
        the job's terminal state (or at once for a job already over and fully read).
        """
        stream = EventStream(self.url, job_id, offset, self.reconnect)
        while not stream.finished:
            retry_after: float | None = None
            try:
                with self._http.stream(
                    "GET", stream.path, headers=stream.headers(), timeout=self._stream_timeout
                ) as response:
                    if stream.refused(response):
                        response.read()
                    if not stream.opened(response):
                        return  # everything was sent before
                    for chunk in response.iter_bytes():
                        yield from stream.feed(chunk)
                        if stream.finished:
                            return
                    cause: ClientError = stream.ended()
            except CONNECTION_ERRORS as exc:
                cause, retry_after = stream.failure(exc)
            time.sleep(stream.backoff(cause, retry_after))


# -- the async client -----------------------------------------------------------------------


class AsyncClient(_Base[httpx.AsyncBaseTransport, httpx.AsyncClient]):
    """The asyncio twin of :class:`Client`: the same methods, awaited; :meth:`events` is an
    async iterator."""

    def _connect(self, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers=self._headers, timeout=self.timeout, transport=transport
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

    async def _request(self, call: Call) -> Any:
        try:
            response = await self._http.request(call.method, call.path, **call.options())
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
        return json_body(response)

    async def _run(self, plan: Plan[T]) -> T:
        answer = None
        while (call := plan.send(answer)) is not None:
            answer = await self._request(call)
        return plan.result

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
        body = calls.submission(
            task, input, queue, timeout, retries, delay, key, callback, priority, concurrency_key
        )
        return await self._run(Plan(calls.submit(body)))

    async def submit_many(
        self,
        jobs: Iterable[dict[str, Any]],
        *,
        batch_size: int = MAX_BATCH,
        on_batch: Callable[[list[BatchResult]], None] | None = None,
    ) -> list[BatchResult]:
        """As :meth:`Client.submit_many`."""
        return await self._run(Plan(calls.submit_many(jobs, batch_size, on_batch)))

    async def get(self, job_id: str, *, wait: float | None = None) -> JobInfo:
        """See :meth:`Client.get`."""
        return await self._run(Plan(calls.get(job_id, wait, self.timeout)))

    async def wait(self, job_id: str, *, timeout: float | None = None) -> JobInfo:
        """See :meth:`Client.wait`."""
        return await self._run(Plan(calls.wait(job_id, timeout, self.timeout)))

    async def cancel(self, job_id: str) -> JobInfo:
        """See :meth:`Client.cancel`."""
        return await self._run(Plan(calls.job_action(job_id, "cancel")))

    async def retry(self, job_id: str) -> JobInfo:
        """See :meth:`Client.retry`."""
        return await self._run(Plan(calls.job_action(job_id, "retry")))

    async def queues(self) -> list[dict[str, Any]]:
        """See :meth:`Client.queues`."""
        return await self._run(Plan(calls.queues()))

    async def pause(self, queue: str) -> dict[str, Any]:
        """See :meth:`Client.pause`."""
        return await self._run(Plan(calls.queue_action(queue, "pause")))

    async def resume(self, queue: str) -> dict[str, Any]:
        """See :meth:`Client.resume`."""
        return await self._run(Plan(calls.queue_action(queue, "resume")))

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
        call = calls.list_call(state, queue, task, limit, cursor)
        return await self._run(Plan(calls.list_jobs(call)))

    async def iter_jobs(
        self,
        *,
        state: JobState | str | None = None,
        queue: str | None = None,
        task: str | None = None,
        page_size: int = 100,
    ) -> AsyncIterator[JobInfo]:
        """See :meth:`Client.iter_jobs`."""
        pages = calls.Pages(state, queue, task, page_size)
        while (call := pages.next_call()) is not None:
            for job in pages.read(await self._request(call)):
                yield job

    async def events(self, job_id: str, *, offset: str | None = None) -> AsyncIterator[JobEvent]:
        """See :meth:`Client.events`."""
        stream = EventStream(self.url, job_id, offset, self.reconnect)
        while not stream.finished:
            retry_after: float | None = None
            try:
                async with self._http.stream(
                    "GET", stream.path, headers=stream.headers(), timeout=self._stream_timeout
                ) as response:
                    if stream.refused(response):
                        await response.aread()
                    if not stream.opened(response):
                        return
                    async for chunk in response.aiter_bytes():
                        for event in stream.feed(chunk):
                            yield event
                        if stream.finished:
                            return
                    cause: ClientError = stream.ended()
            except CONNECTION_ERRORS as exc:
                cause, retry_after = stream.failure(exc)
            await asyncio.sleep(stream.backoff(cause, retry_after))

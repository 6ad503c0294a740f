"""What each method of the clients sends and how it reads the answers, without I/O.

A method is a *plan*: a generator that yields the :class:`Call` s to make, is sent each
answer's JSON body back, and returns the method's result. :class:`Plan` steps through one, so
:class:`outlast.Client` and :class:`outlast.AsyncClient` only send the calls (the answers and
errors are in :mod:`outlast.client_types`); the event iterator's rules are in
:mod:`outlast.client_events`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from outlast.client_events import job_path
from outlast.client_types import BatchResult, ClientError, InvalidResponse, JobInfo, JobPage
from outlast.models import JobState

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
USER_AGENT = "outlast-client"
# The most jobs one batch request holds (the server's limit); submit_many sends more in parts.
MAX_BATCH = 1000
BATCH_PATH = "/v1/jobs/batch"

T = TypeVar("T")


def settings(url: str | None, token: str | None) -> tuple[str, dict[str, str]]:
    """The server's base URL and the headers of every request, from the arguments or the
    environment."""
    base = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ClientError(f"the server URL must start with http:// or https://, not {base!r}")
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    token = token if token is not None else os.environ.get(TOKEN_ENV)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return base, headers


@dataclass(frozen=True, slots=True)
class Call:
    """One request to make; its answer's JSON body goes back to the plan."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    # Seconds; None keeps the client's own timeout.
    timeout: float | None = None

    def options(self) -> dict[str, Any]:
        """The keyword arguments of ``httpx.Client.request`` beyond method and path."""
        options: dict[str, Any] = {}
        if self.params is not None:
            options["params"] = self.params
        if self.json is not None:
            options["json"] = self.json
        if self.timeout is not None:
            options["timeout"] = self.timeout
        return options


Steps = Generator[Call, Any, T]


class Plan(Generic[T]):
    """Steps through *steps*: :meth:`send` gives the next call, or ``None`` once
    :attr:`result` is set."""

    def __init__(self, steps: Steps[T]) -> None:
        self._steps = steps
        self.result: T

    def send(self, answer: Any) -> Call | None:
        try:
            return self._steps.send(answer)
        except StopIteration as done:
            self.result = done.value
            return None


def submission(
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


def submit(body: dict[str, Any]) -> Steps[JobInfo]:
    return JobInfo.from_json((yield Call("POST", "/v1/jobs", json=body)))


def batches(jobs: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
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


def submit_many(
    jobs: Iterable[dict[str, Any]],
    batch_size: int,
    on_batch: Callable[[list[BatchResult]], None] | None,
) -> Steps[list[BatchResult]]:
    results: list[BatchResult] = []
    for part in batches(jobs, batch_size):
        body = yield Call("POST", BATCH_PATH, json={"jobs": part})
        done = BatchResult.list_from_json(body, len(part), len(results))
        results.extend(done)
        if on_batch is not None:
            on_batch(done)
    return results


def filters(**params: Any) -> dict[str, Any]:
    return {name: value for name, value in params.items() if value is not None}


def wait_param(wait: float | None) -> str | None:
    """``?wait=`` as the server reads it: plain decimal seconds (no exponent, at most 9
    decimals), never ``repr`` of a float such as ``29.998731851577759`` or ``1e-05``."""
    return None if wait is None else f"{max(0.0, wait):.3f}"


def get(job_id: str, wait: float | None, timeout: float) -> Steps[JobInfo]:
    """The job, long-polled up to *wait* seconds; *timeout* is the client's own (the wait goes
    on top of it)."""
    params = filters(wait=wait_param(wait))
    call = Call("GET", job_path(job_id), params=params, timeout=timeout + (wait or 0.0))
    return JobInfo.from_json((yield call))


def wait(job_id: str, timeout: float | None, client_timeout: float) -> Steps[JobInfo]:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = WAIT_SLICE if deadline is None else deadline - time.monotonic()
        job = yield from get(job_id, max(0.0, min(WAIT_SLICE, remaining)), client_timeout)
        if job.terminal or remaining <= 0:
            return job


def job_action(job_id: str, action: str) -> Steps[JobInfo]:
    """``cancel`` or ``retry`` the job."""
    return JobInfo.from_json((yield Call("POST", job_path(job_id, f"/{action}"))))


def queues() -> Steps[list[dict[str, Any]]]:
    body = yield Call("GET", "/v1/queues")
    found = body.get("queues") if isinstance(body, dict) else None
    if not isinstance(found, list):
        raise InvalidResponse('expected {"queues": [...]}')
    return found


def queue_action(queue: str, action: str) -> Steps[dict[str, Any]]:
    """``pause`` or ``resume`` the queue."""
    body: dict[str, Any] = yield Call("POST", f"/v1/queues/{quote(queue, safe='')}/{action}")
    return body


def list_call(
    state: JobState | str | None,
    queue: str | None,
    task: str | None,
    limit: int | None,
    cursor: str | None,
) -> Call:
    params = filters(state=state, queue=queue, task=task, limit=limit, cursor=cursor)
    return Call("GET", "/v1/jobs", params=params)


def list_jobs(call: Call) -> Steps[JobPage]:
    """One page of jobs: *call* is its :func:`list_call`."""
    return JobPage.from_json((yield call))


class Pages:
    """Every job that matches, page after page: :meth:`next_call` is the next page's request
    (``None`` after the last page), :meth:`read` its jobs."""

    def __init__(
        self, state: JobState | str | None, queue: str | None, task: str | None, size: int
    ) -> None:
        self._filters = (state, queue, task, size)
        self._cursor: str | None = None
        self._done = False

    def next_call(self) -> Call | None:
        if self._done:
            return None
        return list_call(*self._filters, self._cursor)

    def read(self, body: Any) -> list[JobInfo]:
        page = JobPage.from_json(body)
        self._done = page.next is None
        self._cursor = page.next
        return page.jobs

"""The jobs API: submit (``202``, or live events with ``Accept: text/event-stream``), fetch with
long-poll, list, cancel, the native SSE view of a job's stream, and queue statistics."""

from __future__ import annotations

import builtins
import json
import math
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from outlast.api.body import read_body, read_json
from outlast.api.capability import LinkKey, sign
from outlast.api.error_response import error_response
from outlast.api.sse_response import PING, SSEResponse, sse_event
from outlast.boundary import parse_json, whole_number
from outlast.callbacks import parse_callback, refresh_gauge
from outlast.config import Settings, UpstreamSettings
from outlast.errors import (
    BadRequest,
    NotFound,
    PayloadTooLarge,
    QueueFull,
    RequestError,
    ServiceUnavailable,
    Unprocessable,
)
from outlast.executors.registry import Registry, TaskSpec
from outlast.follow import Readers
from outlast.lifecycle import Lifecycle
from outlast.metrics import Metrics
from outlast.models import JOB_ID_PATTERN, JobRecord, JobState, NewJob, job_stream_name
from outlast.store.base import Store, SubmitResult, format_offset, parse_offset

SUBMIT_FIELDS = frozenset(
    {
        "task",
        "input",
        "queue",
        "timeout",
        "retries",
        "delay",
        "key",
        "callback",
        "priority",
        "concurrency_key",
    }
)
MAX_PRIORITY = 100
MAX_CONCURRENCY_KEY_BYTES = 200
MAX_RETRIES = 100
MAX_TIMEOUT = 7 * 86400.0
MAX_DELAY = 30 * 86400.0
MAX_KEY_LENGTH = 255
MAX_PAGE = 500
MAX_BATCH = 1000
# Retry-After while draining: a restart or another node should be ready by then.
DRAIN_RETRY_AFTER = "5"
_JOB_ID = re.compile(JOB_ID_PATTERN)
# A number of seconds in ASCII digits (float() also takes other scripts' digits, and 'inf').
_SECONDS = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")


class LocalCanceller(Protocol):
    """What the jobs API needs of the worker in its process (a :class:`outlast.worker.Worker`)."""

    def cancel_local(self, job_id: str) -> bool:
        """Stop the job if it runs in this process; whether it did."""
        ...


def _field_error(field: str, message: str) -> Unprocessable:
    return Unprocessable(f"{field}: {message}", extra={"field": field})


def _number(body: dict[str, Any], field: str, low: float, high: float) -> float | None:
    if field not in body or body[field] is None:
        return None
    value = body[field]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _field_error(field, "must be a number")
    if not low <= value <= high:
        raise _field_error(field, f"must be between {low:g} and {high:g}")
    return float(value)


def _utf8_length(text: str) -> int:
    """Bytes of *text* in UTF-8; -1 when it is not valid text (a lone surrogate)."""
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        return -1


def _batch_entries(body: Any) -> list[Any]:
    """The job requests of a batch (422 naming the field when the batch itself is malformed)."""
    if not isinstance(body, dict):
        raise _field_error("body", "must be a JSON object")
    unknown = sorted(set(body) - {"jobs"})
    if unknown:
        raise _field_error(unknown[0], "unknown field")
    entries = body.get("jobs")
    if not isinstance(entries, list):
        raise _field_error("jobs", "is required and must be a list of job requests")
    if len(entries) > MAX_BATCH:
        raise _field_error("jobs", f"at most {MAX_BATCH} jobs in one batch")
    return entries


def _json_size(value: Any) -> int:
    """Bytes of *value* (parsed by the boundary: no lone surrogates) as compact JSON."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _batch_refusal(index: int, exc: RequestError) -> dict[str, Any]:
    """A refused job's entry in a batch's answer: its status and the error a single submit
    would have answered, with the field named from the batch (``jobs[3].timeout``)."""
    error: dict[str, Any] = {"code": exc.code, "message": exc.message, **exc.extra}
    field = exc.extra.get("field")
    if isinstance(field, str):
        where = f"jobs[{index}]" if field == "body" else f"jobs[{index}].{field}"
        message = exc.message.removeprefix(f"{field}: ")
        error.update(field=where, message=f"{where}: {message}")
    return {"status": exc.status, "error": error}


def render_event(message: dict[str, Any], offset: str) -> bytes:
    """One job-stream message as a native SSE event whose id is the offset after it."""
    if message.get("type") == "event":
        event = message.get("event") or None
        return sse_event(data=str(message.get("data", "")), event=event, id=offset)
    return sse_event(
        data=json.dumps(message, separators=(",", ":")),
        event=f"outlast.{message.get('type', 'message')}",
        id=offset,
    )


class JobsAPI:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        registry: Registry,
        lifecycle: Lifecycle,
        metrics: Metrics,
        worker: LocalCanceller | None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.worker = worker
        # With tokens on, read links are signed (the auth middleware loads the key first).
        self.links = LinkKey(settings.auth, store) if settings.auth_enabled else None
        self.readers = Readers(store, lifecycle.stop_readers, settings.streams.max_read_bytes)
        metrics.on_scrape(self.refresh_gauges)
        metrics.on_scrape(lambda: refresh_gauge(store, metrics))

    async def refresh_gauges(self) -> None:
        """Job counts from the store (shared by every node), read when /metrics is scraped."""
        counts = await self.store.queue_counts()
        for name in {*self.settings.queues, *counts}:
            states = counts.get(name, {})
            for state in JobState:
                self.metrics.jobs.labels(name, state.value).set(states.get(state.value, 0))
            self.metrics.queue_depth.labels(name).set(states.get(JobState.QUEUED.value, 0))
        for name, queue in self.settings.queues.items():
            self.metrics.queue_capacity.labels(name).set(queue.capacity)

    @property
    def link_key(self) -> bytes | None:
        return None if self.links is None else self.links.key

    def render(self, job: JobRecord) -> dict[str, Any]:
        """The job as JSON; with tokens on, its read links are signed (for browsers)."""
        if self.link_key is None:
            return job.to_json()
        links = {
            "stream": sign(self.link_key, f"/v1/stream/{job.stream}"),
            "events": sign(self.link_key, f"/v1/jobs/{job.id}/events"),
        }
        return job.to_json(links=links)

    def routes(self) -> list[Route]:
        return [
            Route("/v1/jobs", self.submit, methods=["POST"]),
            Route("/v1/jobs", self.list, methods=["GET"]),
            Route("/v1/jobs/batch", self.submit_batch, methods=["POST"]),
            Route("/v1/jobs/{job_id}", self.get, methods=["GET"]),
            Route("/v1/jobs/{job_id}/cancel", self.cancel, methods=["POST"]),
            Route("/v1/jobs/{job_id}/retry", self.retry, methods=["POST"]),
            Route("/v1/jobs/{job_id}/callback/retry", self.retry_callback, methods=["POST"]),
            Route("/v1/jobs/{job_id}/events", self.events, methods=["GET"]),
            Route("/v1/queues", self.queues, methods=["GET"]),
            Route("/v1/queues/{name}/pause", self.pause, methods=["POST"]),
            Route("/v1/queues/{name}/resume", self.resume, methods=["POST"]),
        ]

    # -- submit ---------------------------------------------------------------------------

    async def parse_submission(self, body: Any) -> NewJob:
        if not isinstance(body, dict):
            raise _field_error("body", "must be a JSON object")
        unknown = sorted(set(body) - SUBMIT_FIELDS)
        if unknown:
            raise _field_error(unknown[0], "unknown field")
        task = body.get("task")
        if not isinstance(task, str) or not task:
            raise _field_error("task", "is required and must be a string")
        spec = self.registry.get(task)
        if spec is None:
            raise Unprocessable(
                f"task: unknown task {task!r}", code="unknown_task", extra={"field": "task"}
            )
        value = body.get("input", {})
        upstream = self.upstream_of(task, value)
        queue = body.get("queue", spec.queue if upstream is None else upstream.queue)
        if not isinstance(queue, str):
            raise _field_error("queue", "must be a string")
        if queue not in self.settings.queues:
            raise Unprocessable(
                f"queue: unknown queue {queue!r}", code="unknown_queue", extra={"field": "queue"}
            )
        await spec.validate(value)
        timeout = _number(body, "timeout", 0.001, MAX_TIMEOUT)
        retries = _number(body, "retries", 0, MAX_RETRIES)
        if retries is not None and retries != int(retries):
            raise _field_error("retries", "must be a whole number")
        delay = _number(body, "delay", 0, MAX_DELAY) or 0.0
        key = body.get("key")
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH):
            raise _field_error("key", f"must be a string of 1 to {MAX_KEY_LENGTH} characters")
        callback = await self.parse_callback(body.get("callback"))
        priority = _number(body, "priority", -MAX_PRIORITY, MAX_PRIORITY)
        if priority is not None and priority != int(priority):
            raise _field_error("priority", "must be a whole number")
        concurrency_key = body.get("concurrency_key")
        if concurrency_key is not None and not (
            isinstance(concurrency_key, str)
            and 0 < _utf8_length(concurrency_key) <= MAX_CONCURRENCY_KEY_BYTES
        ):
            raise _field_error(
                "concurrency_key",
                f"must be a string of 1 to {MAX_CONCURRENCY_KEY_BYTES} bytes (UTF-8)",
            )
        return NewJob(
            task=task,
            queue=queue,
            input=value,
            max_attempts=1 + int(self.task_retries(spec, upstream) if retries is None else retries),
            timeout=spec.timeout if timeout is None else timeout,
            delay=delay,
            key=key,
            callback=callback,
            priority=0 if priority is None else int(priority),
            concurrency_key=concurrency_key,
        )

    def upstream_of(self, task: str, value: Any) -> UpstreamSettings | None:
        """The named upstream a relay job calls (``None``: another task, or a raw URL)."""
        if task != "relay" or not isinstance(value, dict):
            return None
        name = value.get("upstream")
        return self.settings.upstreams.get(name) if isinstance(name, str) else None

    @staticmethod
    def task_retries(spec: TaskSpec, upstream: UpstreamSettings | None) -> int:
        if upstream is not None and upstream.retries is not None:
            return upstream.retries
        return spec.retries

    async def parse_callback(self, value: Any) -> dict[str, Any] | None:
        """A completion webhook asked for (the ``callback`` field or the ``Outlast-Callback``
        header): None, or checked against ``[webhooks]`` (422 naming ``callback``)."""
        return None if value is None else await parse_callback(value, self.settings)

    def check_accepting(self, news: builtins.list[NewJob]) -> None:
        """503 while draining (each job counted as refused)."""
        if self.lifecycle.accepting:
            return
        for new in news:
            self.metrics.jobs_rejected.labels(new.queue, "draining").inc()
        raise ServiceUnavailable(
            "shutting down; submit again shortly",
            code="draining",
            headers={"Retry-After": DRAIN_RETRY_AFTER},
        )

    def count(self, outcomes: Iterable[tuple[NewJob, SubmitResult | RequestError]]) -> None:
        """Count each job's admission in the metrics (each label set once per call)."""
        submitted: Counter[tuple[str, str]] = Counter()
        full: Counter[str] = Counter()
        for new, outcome in outcomes:
            if isinstance(outcome, QueueFull):
                full[new.queue] += 1
            elif isinstance(outcome, SubmitResult) and outcome.created:
                submitted[new.queue, new.task] += 1
        for queue, n in full.items():
            self.metrics.jobs_rejected.labels(queue, "queue_full").inc(n)
        for (queue, task), n in submitted.items():
            self.metrics.jobs_submitted.labels(queue, task).inc(n)

    async def admit(self, new: NewJob) -> tuple[JobRecord, bool]:
        """Admit *new* (503 while draining, 429 when full). Returns (job, created)."""
        self.check_accepting([new])
        capacity = self.settings.queues[new.queue].capacity
        try:
            result = await self.store.submit_job(new, capacity)
        except QueueFull as exc:
            self.count([(new, exc)])
            raise
        self.count([(new, result)])
        return result.job, result.created

    async def submit_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/jobs`` as a bare ASGI app (reached without the router: the hot path)."""
        try:
            response = await self.submit(Request(scope, receive))
        except Exception as exc:
            response = error_response(exc, scope)
        await response(scope, receive, send)

    async def submit(self, request: Request) -> Response | SSEResponse:
        new = await self.parse_submission(
            await read_json(request, self.settings.limits.job_body_bytes)
        )
        job, created = await self.admit(new)
        location = f"/v1/jobs/{job.id}"
        if "text/event-stream" in request.headers.get("accept", ""):
            headers = {"Outlast-Job-Id": job.id, "Location": location}
            return SSEResponse(self.event_stream(job.id, 0), headers=headers)
        return JSONResponse(
            self.render(job), 202 if created else 200, headers={"Location": location}
        )

    async def submit_batch(self, request: Request) -> Response:
        """Up to :data:`MAX_BATCH` submissions in one request and one commit; each job is
        admitted or refused on its own, in order (see docs/jobs.md, "Batch submit")."""
        raw = await read_body(
            request.receive,
            request.headers.get("content-length"),
            self.settings.limits.batch_body_bytes,
        )
        entries = _batch_entries(parse_json(raw))
        # A job no larger than the batch fits a single submit's limit: measured only then.
        job_limit = self.settings.limits.job_body_bytes
        measure = len(raw) > job_limit
        answers: builtins.list[dict[str, Any] | None] = [None] * len(entries)
        batch: builtins.list[tuple[NewJob, int]] = []
        placed: builtins.list[int] = []
        for index, entry in enumerate(entries):
            try:
                if measure and _json_size(entry) > job_limit:
                    raise PayloadTooLarge(
                        f"body: larger than {job_limit} bytes", extra={"field": "body"}
                    )
                new = await self.parse_submission(entry)
            except RequestError as exc:
                answers[index] = _batch_refusal(index, exc)
                continue
            batch.append((new, self.settings.queues[new.queue].capacity))
            placed.append(index)
        self.check_accepting([new for new, _ in batch])
        if batch:
            outcomes = await self.store.submit_jobs(batch)
            self.count(zip((new for new, _ in batch), outcomes, strict=True))
            for index, outcome in zip(placed, outcomes, strict=True):
                if isinstance(outcome, SubmitResult):
                    status = 202 if outcome.created else 200
                    answers[index] = {"status": status, "job": self.render(outcome.job)}
                else:
                    answers[index] = _batch_refusal(index, outcome)
        return JSONResponse({"jobs": answers})

    # -- reading --------------------------------------------------------------------------

    async def _job(self, request: Request) -> JobRecord:
        job_id = request.path_params["job_id"]
        if not _JOB_ID.fullmatch(job_id):
            raise NotFound(f"job not found: {job_id}", code="job_not_found")
        return await self.store.get_job(job_id)

    async def get(self, request: Request) -> Response:
        job = await self._job(request)
        raw_wait = request.query_params.get("wait")
        if raw_wait is not None:
            if not _SECONDS.fullmatch(raw_wait):
                raise _field_error("wait", "must be a non-negative number of seconds")
            wait = float(raw_wait)
            if not job.state.terminal:
                job = await self.wait_terminal(job, min(wait, self.settings.jobs.max_wait))
        return JSONResponse(self.render(job))

    async def wait_terminal(self, job: JobRecord, wait: float) -> JobRecord:
        """*job* once it has ended, or as it is after *wait* seconds (or when readers stop)."""
        deadline = time.monotonic() + wait
        while not job.state.terminal and not self.readers.stopped:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            info = await self.store.head(job.stream)
            if info.closed:
                return await self.store.get_job(job.id)
            await self.readers.wait(job.stream, info.tail, remaining)
            job = await self.store.get_job(job.id)
        return job

    async def list(self, request: Request) -> Response:
        params = request.query_params
        state = params.get("state")
        if state is not None and state not in JobState.__members__.values():
            raise _field_error("state", f"must be one of {', '.join(s.value for s in JobState)}")
        raw_limit = params.get("limit", "50")
        limit = whole_number(raw_limit)
        if limit is None or not 1 <= limit <= MAX_PAGE:
            raise _field_error("limit", f"must be a whole number from 1 to {MAX_PAGE}")
        cursor = params.get("cursor")
        if cursor is not None and not _JOB_ID.fullmatch(cursor):
            raise BadRequest("malformed cursor: it is the id of a job", code="invalid_cursor")
        page = await self.store.list_jobs(
            state=JobState(state) if state else None,
            queue=params.get("queue"),
            task=params.get("task"),
            limit=limit,
            cursor=cursor,
        )
        return JSONResponse({"jobs": [self.render(j) for j in page.jobs], "next": page.next_cursor})

    async def cancel(self, request: Request) -> Response:
        before = await self._job(request)
        job = await self.store.cancel_job(before.id)
        if job.state == JobState.RUNNING and self.worker is not None:
            self.worker.cancel_local(job.id)
        elif job.state.terminal and not before.state.terminal and job.finished_at is not None:
            # Cancelled while waiting: no worker saw it end, so it is counted here.
            self.metrics.job_seconds.labels(job.queue, job.task, job.state.value).observe(
                max(0.0, job.finished_at - job.created_at)
            )
        return JSONResponse(self.render(job), 202)

    async def retry(self, request: Request) -> Response:
        """A failed or cancelled job again, as a new job (``retry_of`` names the old one)."""
        before = await self._job(request)
        if not self.lifecycle.accepting:
            raise ServiceUnavailable(
                "shutting down; submit again shortly",
                code="draining",
                headers={"Retry-After": DRAIN_RETRY_AFTER},
            )
        queue = self.settings.queues.get(before.queue)
        if queue is None:
            raise Unprocessable(
                f"queue: the job's queue {before.queue!r} is no longer configured",
                code="unknown_queue",
                extra={"field": "queue"},
            )
        try:
            result = await self.store.retry_job(before.id, queue.capacity)
        except QueueFull:
            self.metrics.jobs_rejected.labels(before.queue, "queue_full").inc()
            raise
        job = result.job
        self.metrics.jobs_submitted.labels(job.queue, job.task).inc()
        location = f"/v1/jobs/{job.id}"
        return JSONResponse(self.render(job), 202, headers={"Location": location})

    async def retry_callback(self, request: Request) -> Response:
        """Send the job's webhook event again (same ``webhook-id``), whatever its state."""
        job = await self._job(request)
        return JSONResponse(self.render(await self.store.retry_delivery(job.id)), 202)

    async def _queue_list(self, only: str | None = None) -> builtins.list[dict[str, Any]]:
        counts = await self.store.queue_counts()
        paused = await self.store.paused_queues()
        out = []
        for name, queue in self.settings.queues.items():
            if only is not None and name != only:
                continue
            states = counts.get(name, {})
            out.append(
                {
                    "name": name,
                    "concurrency": queue.concurrency,
                    "capacity": queue.capacity,
                    "paused": name in paused,
                    **{state.value: states.get(state.value, 0) for state in JobState},
                }
            )
        return out

    async def queues(self, request: Request) -> Response:
        return JSONResponse({"queues": await self._queue_list()})

    async def _set_paused(self, request: Request, paused: bool) -> Response:
        name = request.path_params["name"]
        if name not in self.settings.queues:
            raise NotFound(f"queue not found: {name}", code="queue_not_found")
        await self.store.pause_queue(name, paused)
        return JSONResponse((await self._queue_list(name))[0])

    async def pause(self, request: Request) -> Response:
        """Start nothing more from the queue, on every node, until resumed (running jobs
        finish; submissions are still admitted)."""
        return await self._set_paused(request, True)

    async def resume(self, request: Request) -> Response:
        return await self._set_paused(request, False)

    # -- native SSE view ------------------------------------------------------------------

    async def events(self, request: Request) -> Response | SSEResponse:
        job = await self._job(request)
        raw = request.headers.get("last-event-id") or request.query_params.get("offset") or "-1"
        info = await self.store.head(job.stream)
        if raw == "-1":
            position = 0
        elif raw == "now":
            position = info.tail  # only what comes next
        else:
            parsed = parse_offset(raw)
            if parsed is None:
                raise BadRequest(f"malformed offset {raw!r}", code="invalid_offset")
            position = parsed
        if position > info.tail:
            raise BadRequest("offset is beyond the end of the job's events", code="invalid_offset")
        if info.closed and position >= info.tail:
            # Everything was sent: 204 stops EventSource from reconnecting.
            return Response(status_code=204)
        return SSEResponse(
            self.event_stream(job.id, position), headers={"Cache-Control": "no-cache"}
        )

    async def event_stream(self, job_id: str, position: int) -> AsyncIterator[bytes]:
        follow = self.readers.follow(job_stream_name(job_id), position, self.settings.sse.keepalive)
        with self.metrics.readers.labels("job-events").track_inprogress():
            async for result in follow:
                if result is None:
                    yield PING
                elif result.units:
                    yield b"".join(
                        render_event(message, format_offset(unit.end))
                        for unit in result.units
                        for message in json.loads(b"[" + unit.data + b"]")
                    )

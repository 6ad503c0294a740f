"""The jobs API: submit (``202``, or live events with ``Accept: text/event-stream``), fetch with
long-poll, list, cancel, the native SSE view of a job's stream, and queue statistics."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from outlast.api.body import read_json
from outlast.api.capability import LinkKey, sign
from outlast.api.sse_response import PING, SSEResponse, sse_event
from outlast.boundary import whole_number
from outlast.config import Settings
from outlast.errors import (
    BadRequest,
    NotFound,
    QueueFull,
    ServiceUnavailable,
    Unprocessable,
)
from outlast.executors.registry import Registry
from outlast.follow import Readers
from outlast.lifecycle import Lifecycle
from outlast.metrics import Metrics
from outlast.models import JOB_ID_PATTERN, JobRecord, JobState, NewJob, job_stream_name
from outlast.store.base import Store, format_offset, parse_offset

SUBMIT_FIELDS = frozenset({"task", "input", "queue", "timeout", "retries", "delay", "key"})
MAX_RETRIES = 100
MAX_TIMEOUT = 7 * 86400.0
MAX_DELAY = 30 * 86400.0
MAX_KEY_LENGTH = 255
MAX_PAGE = 500
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
            Route("/v1/jobs/{job_id}", self.get, methods=["GET"]),
            Route("/v1/jobs/{job_id}/cancel", self.cancel, methods=["POST"]),
            Route("/v1/jobs/{job_id}/events", self.events, methods=["GET"]),
            Route("/v1/queues", self.queues, methods=["GET"]),
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
        queue = body.get("queue", spec.queue)
        if not isinstance(queue, str):
            raise _field_error("queue", "must be a string")
        if queue not in self.settings.queues:
            raise Unprocessable(
                f"queue: unknown queue {queue!r}", code="unknown_queue", extra={"field": "queue"}
            )
        value = body.get("input", {})
        await spec.validate(value)
        timeout = _number(body, "timeout", 0.001, MAX_TIMEOUT)
        retries = _number(body, "retries", 0, MAX_RETRIES)
        if retries is not None and retries != int(retries):
            raise _field_error("retries", "must be a whole number")
        delay = _number(body, "delay", 0, MAX_DELAY) or 0.0
        key = body.get("key")
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH):
            raise _field_error("key", f"must be a string of 1 to {MAX_KEY_LENGTH} characters")
        return NewJob(
            task=task,
            queue=queue,
            input=value,
            max_attempts=1 + int(spec.retries if retries is None else retries),
            timeout=spec.timeout if timeout is None else timeout,
            delay=delay,
            key=key,
        )

    async def admit(self, new: NewJob) -> tuple[JobRecord, bool]:
        """Admit *new* (503 while draining, 429 when full). Returns (job, created)."""
        if not self.lifecycle.accepting:
            self.metrics.jobs_rejected.labels(new.queue, "draining").inc()
            raise ServiceUnavailable(
                "shutting down; submit again shortly",
                code="draining",
                headers={"Retry-After": DRAIN_RETRY_AFTER},
            )
        capacity = self.settings.queues[new.queue].capacity
        try:
            result = await self.store.submit_job(new, capacity)
        except QueueFull:
            self.metrics.jobs_rejected.labels(new.queue, "queue_full").inc()
            raise
        if result.created:
            self.metrics.jobs_submitted.labels(new.queue, new.task).inc()
        return result.job, result.created

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

    async def queues(self, request: Request) -> Response:
        counts = await self.store.queue_counts()
        out = []
        for name, queue in self.settings.queues.items():
            states = counts.get(name, {})
            out.append(
                {
                    "name": name,
                    "concurrency": queue.concurrency,
                    "capacity": queue.capacity,
                    **{state.value: states.get(state.value, 0) for state in JobState},
                }
            )
        return JSONResponse({"queues": out})

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

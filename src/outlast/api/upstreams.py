"""Relays reached the way clients already speak: the OpenAI-compatible pass-through
``POST /v1/upstreams/<name>/<path>`` and the Durable Proxy endpoint ``POST /v1/proxy``.

Both create a ``relay`` job, so the upstream is read to its end whatever the client does.

Pass-through: with ``"stream": true`` in the JSON body (the openai SDK sends ``Accept:
application/json`` even then, so the body decides) the answer is the upstream's own events,
ending with its ``data: [DONE]``; otherwise the upstream's status and body once the job has
finished. An upstream error before the first event is answered with the upstream's status and
body excerpt, so SDKs raise their usual errors; a relay that fails after events were sent ends
its stream with an OpenAI-style ``{"error": ...}`` event, which the SDK raises as an error
rather than ending quietly with half an answer.

``Idempotency-Key`` becomes the job's key: an SDK retry (same key) gets the existing job's
answer, from its first event, and never starts a second upstream call. A retry that also sends
``Last-Event-ID`` (the ids here are the job stream's offsets) continues after that event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from outlast.api.body import read_body, read_json
from outlast.api.capability import sign
from outlast.api.jobs import JobsAPI
from outlast.api.sse_response import PING, SSEResponse, sse_event
from outlast.errors import BadRequest, NotFound, RequestError
from outlast.models import JobRecord, JobState, NewJob, job_stream_name
from outlast.store.base import format_offset, parse_offset

# Request headers a client sends that must not reach the upstream: the upstream's own secret
# headers come from config, and Authorization here is the client's token for outlast.
CLIENT_ONLY_HEADERS = frozenset(
    {
        "host",
        "authorization",
        "content-length",
        "connection",
        "accept-encoding",
        "idempotency-key",
        "last-event-id",
        "transfer-encoding",
        "cookie",
    }
)
FORWARDED_PREFIXES = ("openai-", "anthropic-", "x-")
# SDK telemetry (the openai SDK's retry count and timeouts among it): it changes from one retry
# to the next, and a retry must be the same job input to find the existing job by its key.
VOLATILE_PREFIXES = ("x-stainless-",)


def _forwarded_headers(request: Request) -> dict[str, str]:
    out = {}
    for name, value in request.headers.items():
        lower = name.lower()
        if (
            lower in CLIENT_ONLY_HEADERS
            or lower.startswith("upstream-")
            or lower.startswith(VOLATILE_PREFIXES)
        ):
            continue
        if lower in ("content-type", "accept") or lower.startswith(FORWARDED_PREFIXES):
            out[lower] = value
    return out


def _messages(data: bytes) -> list[dict[str, Any]]:
    parsed: list[dict[str, Any]] = json.loads(b"[" + data + b"]")
    return parsed


class UpstreamsAPI:
    def __init__(self, jobs: JobsAPI) -> None:
        self.jobs = jobs
        self.settings = jobs.settings
        self.store = jobs.store
        self.readers = jobs.readers

    def routes(self) -> list[Route]:
        return [
            Route("/v1/upstreams/{name}/{path:path}", self.pass_through, methods=["POST"]),
            Route("/v1/proxy", self.proxy, methods=["POST"]),
        ]

    async def _relay_job(self, value: dict[str, Any], key: str | None) -> tuple[JobRecord, bool]:
        spec = self.jobs.registry.get("relay")
        assert spec is not None
        await spec.validate(value)
        new = NewJob(
            task="relay",
            queue=spec.queue,
            input=value,
            max_attempts=1 + spec.retries,
            timeout=spec.timeout,
            key=key,
        )
        return await self.jobs.admit(new)

    # -- OpenAI-compatible pass-through ----------------------------------------------------

    async def pass_through(self, request: Request) -> Response | SSEResponse:
        name = request.path_params["name"]
        if name not in self.settings.upstreams:
            raise NotFound(f"no upstream named {name!r}", code="unknown_upstream")
        raw = await read_json(request, self.settings.limits.job_body_bytes)
        streaming = isinstance(raw, dict) and raw.get("stream") is True
        idem = request.headers.get("idempotency-key")
        key = f"upstream:{name}:{idem}" if idem else None
        path = "/" + request.path_params["path"]
        if request.url.query:
            path += "?" + request.url.query
        value = {
            "upstream": name,
            "path": path,
            "method": "POST",
            "headers": _forwarded_headers(request),
            "body": raw,
        }
        # Checked before the job exists: a refused request must not call the upstream.
        resume = self._resume_from(request)
        job, _ = await self._relay_job(value, key)
        headers = {"Outlast-Job-Id": job.id, "Location": f"/v1/jobs/{job.id}"}
        if streaming:
            return await self._stream_answer(job, headers, resume)
        job = await self.jobs.wait_terminal(job, job.timeout + 5)
        return self._final_answer(job, headers)

    def _resume_from(self, request: Request) -> int | None:
        raw = request.headers.get("last-event-id")
        if not raw:
            return None
        position = parse_offset(raw)
        if position is None:
            raise BadRequest(f"malformed Last-Event-ID {raw!r}", code="invalid_offset")
        return position

    async def _stream_answer(
        self, job: JobRecord, headers: dict[str, str], resume: int | None
    ) -> Response | SSEResponse:
        """Wait for the first upstream event (or the end), then answer like the upstream."""
        first = await self._first_event_or_end(job)
        if first is None:
            job = await self.store.get_job(job.id)
            return self._final_answer(job, headers)
        position = first if resume is None else max(first, resume)
        return SSEResponse(
            self._upstream_events(job.id, position),
            headers={**headers, "Cache-Control": "no-cache"},
        )

    async def _first_event_or_end(self, job: JobRecord) -> int | None:
        """The position of the first upstream event; ``None`` if the job ended without one."""
        follow = self.readers.follow(job.stream, 0, self.settings.sse.keepalive)
        async for result in follow:
            for unit in result.units if result is not None else ():
                if any(m.get("type") == "event" for m in _messages(unit.data)):
                    return unit.start
        if follow.end == "stopped":
            raise RequestError("shutting down", code="draining")
        return None

    async def _upstream_events(self, job_id: str, position: int) -> AsyncIterator[bytes]:
        """The upstream's own events, as it sent them (ids are outlast offsets, for resuming),
        then an error event if the relay failed after them."""
        follow = self.readers.follow(job_stream_name(job_id), position, self.settings.sse.keepalive)
        async for result in follow:
            if result is None:
                yield PING
                continue
            out = [
                _upstream_event(message, format_offset(unit.end))
                for unit in result.units
                for message in _messages(unit.data)
                if message.get("type") == "event"
            ]
            if out:
                yield b"".join(out)
        if follow.end == "closed":
            job = await self.store.get_job(job_id)
            if job.state != JobState.SUCCEEDED:
                yield _error_event(job)

    def _final_answer(self, job: JobRecord, headers: dict[str, str]) -> Response:
        if job.state == JobState.SUCCEEDED and isinstance(job.result, dict):
            result = job.result
            status = int(result.get("status", 200))
            if "body" in result:
                media = result.get("content_type") or "application/json"
                return Response(result["body"], status, headers=headers, media_type=media)
            return JSONResponse(result, status, headers=headers)
        error = job.error or {}
        if error.get("code") == "upstream_status" and "status" in error:
            body = error.get("body", "")
            media = "application/json" if body.lstrip().startswith("{") else "text/plain"
            return Response(body, int(error["status"]), headers=headers, media_type=media)
        status = 504 if error.get("code") == "timeout" or not job.state.terminal else 502
        return JSONResponse(
            {
                "error": {
                    "code": error.get("code", "upstream_error"),
                    "message": error.get("message", f"job {job.id} is {job.state.value}"),
                    "job": job.id,
                }
            },
            status,
            headers=headers,
        )

    # -- Durable Proxy -------------------------------------------------------------------

    async def proxy(self, request: Request) -> Response:
        url = request.headers.get("upstream-url")
        name = request.headers.get("upstream-name")
        if bool(url) == bool(name):
            raise BadRequest(
                "send Upstream-URL, or Upstream-Name with Upstream-Path", code="missing_upstream"
            )
        method = (request.headers.get("upstream-method") or "POST").upper()
        body = await read_body(
            request.receive,
            request.headers.get("content-length"),
            self.settings.limits.job_body_bytes,
        )
        headers = _forwarded_headers(request)
        auth = request.headers.get("upstream-authorization")
        if auth:
            headers["authorization"] = auth
        value: dict[str, Any] = {"method": method, "headers": headers}
        if body:
            value["body"] = body.decode("utf-8", "replace")
        if name:
            value["upstream"] = name
            value["path"] = request.headers.get("upstream-path", "/")
        else:
            value["url"] = url
        job, created = await self._relay_job(value, request.headers.get("idempotency-key"))
        # Answered now: the upstream is called by a worker, after this response has gone.
        location = f"/v1/stream/{job.stream}"
        if self.jobs.link_key is not None:
            location = sign(self.jobs.link_key, location)
        return JSONResponse(
            self.jobs.render(job),
            status_code=201 if created else 200,
            headers={"Location": location, "Outlast-Job-Id": job.id},
        )


def _upstream_event(message: dict[str, Any], offset: str) -> bytes:
    """A relayed event as the upstream sent it (``message``, its default type, is implied)."""
    event = message.get("event")
    return sse_event(
        data=str(message.get("data", "")),
        event=None if event in (None, "", "message") else event,
        id=offset,
    )


def _error_event(job: JobRecord) -> bytes:
    """A failed relay's error, shaped like an OpenAI stream error so that SDKs raise it."""
    error = job.error or {}
    body = {
        "error": {
            "message": str(error.get("message", f"the relay job {job.id} is {job.state.value}")),
            "type": "outlast_relay_error",
            "code": error.get("code", job.state.value),
            "job": job.id,
        }
    }
    return sse_event(data=json.dumps(body))

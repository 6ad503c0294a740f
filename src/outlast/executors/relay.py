"""The built-in ``relay`` task: read an upstream ``text/event-stream`` to its end, storing each
event in the job's stream before any reader can see it.

The upstream is read by the worker that owns the job, never by code inside a client's response:
readers come and go, the read goes on, and readers only ever read the store, so a slow reader
cannot slow the upstream down. Each attempt:

1. resolves the target (a named upstream with its secret headers, or an allowed raw URL) and
   refuses private addresses unless allowed, after DNS and again at connect time;
2. connects (``connect_timeout``), waits for the response head (``first_byte_timeout``), then
   reads with at most ``idle_timeout`` of silence between chunks; the job's own ``timeout``
   bounds the whole attempt (the worker enforces it);
3. decodes the body with the WHATWG SSE rules and appends every event as
   ``{"type": "event", "event", "data", "id"}``. Appends are pipelined: the next chunk is read
   while the previous events commit, in order, and the read pauses only when the store falls
   more than ``MAX_PENDING_BYTES`` behind.

A failure before any event is retried like any failed attempt. After events were stored, a retry
resumes with ``Last-Event-ID`` when the upstream gave ids; without ids the job ends as
``interrupted`` rather than risk duplicate output. An OpenAI-style stream (chunks with
``choices``) that ends cleanly without ``data: [DONE]`` and without any ``finish_reason`` was cut
(a proxy closing the connection mid-answer), and is treated like any other break; streams in
other formats end when their body ends. An attempt that finds the stream already
complete (``data: [DONE]`` stored, the worker stopped before it could finish the job) finishes
without calling the upstream again. A non-event-stream 2xx answer (a plain JSON completion,
say) is kept whole as the result's ``body``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from outlast.boundary import check_headers
from outlast.config import RelaySettings, Settings
from outlast.egress import (
    EgressRefused,
    Target,
    check_url,
    egress_scope,
    resolve_and_check,
    upstream_target,
)
from outlast.errors import Forbidden, Unprocessable
from outlast.executors import TaskFailure
from outlast.follow import Follow
from outlast.models import job_stream_name
from outlast.sse import SSEDecoder, SSEEvent, SSELimitError
from outlast.store.base import Store
from outlast.tasks import Job

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
INPUT_FIELDS = frozenset({"upstream", "path", "url", "method", "headers", "body"})
# Decoded events waiting while the previous batch commits. Past this the upstream read pauses
# until the store catches up: memory stays bounded. Readers never cause this, the store does.
MAX_PENDING_BYTES = 16 << 20
# One append to the store carries at most this much; a burst is cut into several.
MAX_BATCH_BYTES = 1 << 20
# How long a cancelled attempt lets its last append finish before cutting it.
ABORT_WAIT = 5.0
# Headers a client may not set on the upstream request: hop-by-hop, or owned by outlast.
DROPPED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "transfer-encoding",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-authorization",
        "accept-encoding",
        "last-event-id",
    }
)
# 4xx answers worth another attempt; any other 4xx will not change by asking again.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})


async def validate_input(value: Any, settings: Settings) -> None:
    """Reject a bad relay input at submit time: 422 naming the field, 403 for egress."""
    if not isinstance(value, dict):
        raise Unprocessable("input must be a JSON object", extra={"field": "input"})
    unknown = sorted(set(value) - INPUT_FIELDS)
    if unknown:
        raise Unprocessable(
            f"input.{unknown[0]}: unknown field", extra={"field": f"input.{unknown[0]}"}
        )
    target = resolve_target(value, settings)
    await resolve_and_check(target)
    method = value.get("method", "POST")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise Unprocessable("input.method must be an HTTP method", extra={"field": "input.method"})
    headers = value.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise Unprocessable(
            "input.headers must map names to strings", extra={"field": "input.headers"}
        )
    check_headers(headers, "input.headers")


def resolve_target(value: dict[str, Any], settings: Settings) -> Target:
    if "upstream" in value:
        if "url" in value:
            raise Unprocessable(
                "give input.upstream or input.url, not both", extra={"field": "input.url"}
            )
        name = value["upstream"]
        if not isinstance(name, str) or name not in settings.upstreams:
            raise Unprocessable(
                f"input.upstream: unknown upstream {name!r}",
                code="unknown_upstream",
                extra={"field": "input.upstream"},
            )
        path = value.get("path", "")
        if not isinstance(path, str) or "://" in path or path.startswith("//"):
            raise Unprocessable(
                "input.path must be a path such as /v1/chat/completions",
                extra={"field": "input.path"},
            )
        return upstream_target(settings.upstreams[name], path)
    url = value.get("url")
    if not isinstance(url, str):
        raise Unprocessable(
            "input.upstream or input.url is required", extra={"field": "input.upstream"}
        )
    return check_url(url, settings.egress, field="input.url")


@dataclass
class _Progress:
    """What the job's stream holds so far, so that a retry continues instead of repeating."""

    events: int = 0
    last_id: str | None = None
    done: bool = False
    text_parts: list[str] = field(default_factory=list)
    saw_chat_chunks: bool = False
    openai_style: bool = False  # chunks with ``choices``: such a stream says when it is over
    finished: bool = False  # a ``finish_reason`` was given

    def add(self, event: SSEEvent) -> None:
        self.events += 1
        if event.id is not None:
            # An empty id resets it, as for EventSource: nothing to resume from then.
            self.last_id = event.id or None
        data = event.data
        if data.strip() == "[DONE]":
            self.done = True
            return
        if not data.startswith("{"):
            return
        try:
            parsed = json.loads(data)
        except ValueError:
            return
        choices = _choices(parsed)
        if choices:
            self.openai_style = True
            if any(choice.get("finish_reason") for choice in choices):
                self.finished = True
        content = _delta_content(parsed)
        if content is not None:
            self.saw_chat_chunks = True
            self.text_parts.append(content)

    @property
    def cut_short(self) -> bool:
        """An OpenAI-style stream that has not said it is over: no ``[DONE]``, no finish."""
        return self.openai_style and not self.done and not self.finished

    def result(self, status: int) -> dict[str, Any]:
        out: dict[str, Any] = {"status": status, "events": self.events, "done": self.done}
        if self.saw_chat_chunks:
            out["text"] = "".join(self.text_parts)
        return out


def _choices(chunk: Any) -> list[dict[str, Any]]:
    """The ``choices`` of an OpenAI-style streaming chunk (chat or legacy completions), or []."""
    if not isinstance(chunk, dict):
        return []
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return []
    return [c for c in choices if isinstance(c, dict) and ("delta" in c or "finish_reason" in c)]


def _delta_content(chunk: Any) -> str | None:
    """``choices[0].delta.content`` of an OpenAI-style streaming chunk, if that is what it is."""
    if not isinstance(chunk, dict):
        return None
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    delta = choices[0].get("delta")
    if not isinstance(delta, dict):
        return None
    content = delta.get("content")
    return content if isinstance(content, str) else ("" if "content" in delta else None)


async def _stored_progress(store: Store, job: Job, max_bytes: int) -> _Progress:
    progress = _Progress()
    async for result in Follow(store, job_stream_name(job.id), 0, max_bytes):
        for unit in result.units if result is not None else ():
            for message in json.loads(b"[" + unit.data + b"]"):
                if message.get("type") == "event":
                    progress.add(
                        SSEEvent(
                            event=message.get("event") or "message",
                            data=message.get("data", ""),
                            id=message.get("id"),
                        )
                    )
    return progress


def _request_body(value: Any) -> tuple[bytes | None, dict[str, str]]:
    if value is None:
        return None, {}
    if isinstance(value, str):
        return value.encode(), {}
    return json.dumps(value).encode(), {"content-type": "application/json"}


def _event_message(event: SSEEvent) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "event", "event": event.event, "data": event.data}
    if event.id is not None:
        message["id"] = event.id
    return message


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark an abandoned append's outcome as seen (it no longer matters to anyone)."""
    if not task.cancelled():
        task.exception()


def _cut(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The first batch of *messages* (at least one, at most about ``MAX_BATCH_BYTES``)."""
    size = 0
    for i, message in enumerate(messages):
        size += len(message["data"])
        if size >= MAX_BATCH_BYTES:
            return messages[: i + 1], messages[i + 1 :]
    return messages, []


class _Appender:
    """Appends events in order with one append in flight; the next batch starts as soon as the
    previous one committed, so no event waits for the upstream's next chunk to be stored."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.pending: list[dict[str, Any]] = []
        self.pending_bytes = 0
        self.inflight: asyncio.Task[None] | None = None

    async def add(self, messages: list[dict[str, Any]]) -> None:
        self.pending.extend(messages)
        self.pending_bytes += sum(len(m["data"]) for m in messages)
        if self.inflight is not None and self.inflight.done():
            task, self.inflight = self.inflight, None
            await task  # raises what the append raised
        if self.inflight is None:
            self.inflight = asyncio.ensure_future(self._drain())
        if self.pending_bytes > MAX_PENDING_BYTES:
            await self.flush()  # back-pressure: the store is behind

    async def _drain(self) -> None:
        while self.pending:
            batch, self.pending = _cut(self.pending)
            self.pending_bytes -= sum(len(m["data"]) for m in batch)
            await self.job.emit_messages(batch)

    async def flush(self) -> None:
        """Wait until everything added is stored (raises what an append raised)."""
        while self.inflight is not None:
            task = self.inflight
            await task
            if self.inflight is task:
                self.inflight = None
        if self.pending:
            self.inflight = asyncio.ensure_future(self._drain())
            await self.flush()

    async def abort(self) -> None:
        """The attempt is over (cancelled, timed out): drop what waits, and let the append in
        flight end on its own rather than cut a store write in the middle."""
        self.pending, self.pending_bytes = [], 0
        task, self.inflight = self.inflight, None
        if task is None:
            return
        await asyncio.wait({task}, timeout=ABORT_WAIT)
        if not task.done():
            task.cancel()
        task.add_done_callback(_retrieve)


def _headers(value: dict[str, Any], settings: Settings, implied: dict[str, str]) -> dict[str, str]:
    headers: dict[str, str] = {"accept": "text/event-stream", **implied}
    for name, header_value in value.get("headers", {}).items():
        if name.lower() not in DROPPED_HEADERS:
            headers[name.lower()] = header_value
    if "upstream" in value:
        # The upstream's own headers (its API key, say) win; clients never see them.
        for name, header_value in settings.upstreams[value["upstream"]].headers.items():
            headers[name.lower()] = header_value
    return headers


async def run_relay(
    job: Job, value: dict[str, Any], *, settings: Settings, store: Store, client: httpx.AsyncClient
) -> dict[str, Any]:
    relay = settings.relay
    target = resolve_target(value, settings)
    try:
        await resolve_and_check(target)
    except Forbidden as exc:
        raise TaskFailure("upstream_error", exc.message, retryable=False) from exc
    progress = await _stored_progress(store, job, settings.streams.max_read_bytes)
    if progress.done:
        # An earlier attempt stored the whole stream and stopped before finishing the job.
        return progress.result(200)
    if progress.events and progress.last_id is None:
        raise TaskFailure(
            "interrupted",
            f"the upstream stream broke after {progress.events} events and gave no event ids "
            "to resume from; not repeating the request (it would duplicate output)",
            retryable=False,
        )
    body, implied = _request_body(value.get("body"))
    headers = _headers(value, settings, implied)
    if progress.last_id is not None:
        headers["last-event-id"] = progress.last_id
    request = client.build_request(
        value.get("method", "POST").upper(),
        target.url,
        headers=headers,
        content=body,
        # Our own clocks below enforce first byte and idle with clear messages, and every
        # read runs under one of them (the head under first_byte_timeout, each body chunk
        # under idle_timeout). No httpx read timeout: it would only repeat them, at the cost
        # of a timeout scope per chunk read (see egress.LeanStream).
        timeout=httpx.Timeout(
            connect=relay.connect_timeout,
            read=None,
            write=relay.idle_timeout,
            pool=relay.connect_timeout,
        ),
    )
    appender = _Appender(job)
    try:
        with egress_scope(target):
            try:
                async with asyncio.timeout(relay.first_byte_timeout):
                    response = await client.send(request, stream=True)
            except TimeoutError as exc:
                raise TaskFailure(
                    "upstream_error",
                    f"no response from the upstream within {relay.first_byte_timeout:g} s "
                    "(first_byte_timeout)",
                ) from exc
            try:
                return await _consume(response, progress, appender, relay)
            finally:
                await response.aclose()
    except EgressRefused as exc:
        raise TaskFailure("upstream_error", str(exc), retryable=False) from exc
    except (httpx.HTTPError, _Silent) as exc:
        # What arrived before the break is kept: a retry resumes after it (Last-Event-ID), and
        # a relay that cannot resume reports exactly what was stored.
        await appender.flush()
        raise _transport_failure(exc, progress, relay) from exc
    except TaskFailure:
        await appender.flush()
        raise
    except BaseException:
        await appender.abort()
        raise


class _Silent(Exception):
    """The upstream sent nothing for longer than ``idle_timeout``."""


async def _chunks(response: httpx.Response, idle: float) -> AsyncIterator[bytes]:
    """The body's chunks (content-encoding undone), each within *idle* seconds of the last."""
    chunks = response.aiter_bytes()
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError as exc:
            raise _Silent() from exc
        yield chunk


async def _consume(
    response: httpx.Response, progress: _Progress, appender: _Appender, relay: RelaySettings
) -> dict[str, Any]:
    status = response.status_code
    if not 200 <= status < 300:
        excerpt = await _excerpt(response, relay)
        raise TaskFailure(
            "upstream_status",
            f"upstream answered {status}",
            retryable=status >= 500 or status in RETRYABLE_STATUSES,
            status=status,
            body=excerpt,
        )
    content_type = response.headers.get("content-type", "")
    if "text/event-stream" not in content_type.lower():
        return await _plain_body(response, status, content_type, relay)
    decoder = SSEDecoder(max_line_bytes=relay.max_line_bytes, max_event_bytes=relay.max_event_bytes)
    try:
        async for chunk in _chunks(response, relay.idle_timeout):
            events = decoder.feed(chunk)
            if events:
                for event in events:
                    progress.add(event)
                await appender.add([_event_message(e) for e in events])
    except SSELimitError as exc:
        raise TaskFailure(
            "upstream_error", f"upstream stream rejected: {exc}", retryable=False
        ) from exc
    # The unfinished last event (no blank line after it) is dropped, as WHATWG says.
    decoder.close()
    await appender.flush()
    if progress.cut_short:
        raise _after_break(
            "the upstream stream ended without data: [DONE] or a finish_reason (cut short)",
            progress,
        )
    return progress.result(status)


async def _excerpt(response: httpx.Response, relay: RelaySettings) -> str:
    """The start of an error body, bounded in size and in time."""
    data = b""
    with contextlib.suppress(httpx.HTTPError, _Silent):
        async for chunk in _chunks(response, relay.idle_timeout):
            data += chunk
            if len(data) >= relay.excerpt_bytes:
                break
    return data[: relay.excerpt_bytes].decode("utf-8", "replace")


async def _plain_body(
    response: httpx.Response, status: int, content_type: str, relay: RelaySettings
) -> dict[str, Any]:
    data = b""
    async for chunk in _chunks(response, relay.idle_timeout):
        data += chunk
        if len(data) > relay.max_body_bytes:
            raise TaskFailure(
                "upstream_error",
                f"upstream body larger than {relay.max_body_bytes} bytes (max_body_bytes)",
                retryable=False,
            )
    return {
        "status": status,
        "events": 0,
        "done": False,
        "content_type": content_type,
        "body": data.decode("utf-8", "replace"),
    }


def _transport_failure(
    exc: httpx.HTTPError | _Silent, progress: _Progress, relay: RelaySettings
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
    return _after_break(what, progress)


def _after_break(what: str, progress: _Progress) -> TaskFailure:
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

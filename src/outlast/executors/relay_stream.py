"""Reading the upstream's answer: its body chunk by chunk under ``idle_timeout``, decoded with
the WHATWG SSE rules, each event appended to the job's stream. Appends are pipelined
(:class:`Appender`): the next chunk is read while the previous events commit, in order, and the
read pauses only when the store falls more than ``MAX_PENDING_BYTES`` behind. A non-event-stream
2xx answer is kept whole; an error answer becomes the attempt's failure, or a wait when the
upstream asks for one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from outlast.config import RelaySettings
from outlast.executors import TaskFailure, TaskWait
from outlast.executors.relay_policy import (
    RATE_LIMIT_STATUSES,
    RETRYABLE_STATUSES,
    _Silent,
    after_break,
    retry_delay,
)
from outlast.executors.relay_progress import Progress, reported_usage
from outlast.sse import SSEDecoder, SSEEvent, SSELimitError
from outlast.tasks import Job

# Decoded events waiting while the previous batch commits. Past this the upstream read pauses
# until the store catches up: memory stays bounded. Readers never cause this, the store does.
MAX_PENDING_BYTES = 16 << 20
# One append to the store carries at most this much; a burst is cut into several.
MAX_BATCH_BYTES = 1 << 20
# How long a cancelled attempt lets its last append finish before cutting it.
ABORT_WAIT = 5.0


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


class Appender:
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


async def consume(
    response: httpx.Response,
    progress: Progress,
    appender: Appender,
    relay: RelaySettings,
    wait_limits: bool,
) -> dict[str, Any]:
    status = response.status_code
    if not 200 <= status < 300:
        excerpt = await _excerpt(response, relay)
        failure = TaskFailure(
            "upstream_status",
            f"upstream answered {status}",
            retryable=status >= 500 or status in RETRYABLE_STATUSES,
            status=status,
            body=excerpt,
        )
        delay = retry_delay(response.headers) if status in RATE_LIMIT_STATUSES else None
        if wait_limits and delay is not None and not progress.events:
            # "Not now, try in <delay>": wait in the queue, without spending the attempt.
            raise TaskWait(time.time() + delay, "upstream_rate_limited", failure)
        raise failure
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
        raise after_break(
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
    text = data.decode("utf-8", "replace")
    out: dict[str, Any] = {
        "status": status,
        "events": 0,
        "done": False,
        "content_type": content_type,
        "body": text,
    }
    if "json" in content_type.lower() and '"usage"' in text:
        with contextlib.suppress(ValueError):
            usage = reported_usage(json.loads(text))
            if usage is not None:
                out["usage"] = usage
    return out

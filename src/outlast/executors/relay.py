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

This module runs the attempt; its parts are :mod:`~outlast.executors.relay_request` (the input
and the upstream request), :mod:`~outlast.executors.relay_stream` (reading the answer and
storing its events), :mod:`~outlast.executors.relay_progress` (what the stream holds so far, the
OpenAI-style format) and :mod:`~outlast.executors.relay_policy` (retries and waits).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx

from outlast.config import Settings
from outlast.egress import EgressRefused, Target, egress_scope, resolve_and_check
from outlast.errors import Forbidden
from outlast.executors import TaskFailure, TaskWait
from outlast.executors.relay_policy import (
    RATE_LIMIT_STATUSES,
    RELAY_HOLD,
    RETRYABLE_STATUSES,
    _Silent,
    parse_duration,
    retry_delay,
    transport_failure,
)
from outlast.executors.relay_progress import (
    USAGE_FIELDS,
    Progress,
    asks_usage,
    is_streaming_chat,
    is_unasked_usage,
    reported_usage,
    stored_progress,
)
from outlast.executors.relay_request import (
    DROPPED_HEADERS,
    INPUT_FIELDS,
    METHODS,
    build_request,
    resolve_target,
    validate_input,
)
from outlast.executors.relay_stream import (
    ABORT_WAIT,
    MAX_BATCH_BYTES,
    MAX_PENDING_BYTES,
    Appender,
    consume,
)
from outlast.store.base import Store, UpstreamLimits
from outlast.tasks import Job

# What this module offered before its parts moved to relay_request, relay_progress,
# relay_stream and relay_policy stays importable from here.
__all__ = [
    "ABORT_WAIT",
    "DROPPED_HEADERS",
    "INPUT_FIELDS",
    "MAX_BATCH_BYTES",
    "MAX_PENDING_BYTES",
    "METHODS",
    "RATE_LIMIT_STATUSES",
    "RELAY_HOLD",
    "RETRYABLE_STATUSES",
    "USAGE_FIELDS",
    "asks_usage",
    "is_streaming_chat",
    "is_unasked_usage",
    "parse_duration",
    "reported_usage",
    "resolve_target",
    "retry_delay",
    "run_relay",
    "validate_input",
]


async def run_relay(
    job: Job, value: dict[str, Any], *, settings: Settings, store: Store, client: httpx.AsyncClient
) -> dict[str, Any]:
    target = resolve_target(value, settings)
    try:
        await resolve_and_check(target)
    except Forbidden as exc:
        raise TaskFailure("upstream_error", exc.message, retryable=False) from exc
    progress = await stored_progress(store, job, settings.streams.max_read_bytes)
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
    name = value.get("upstream")
    upstream = settings.upstreams.get(name) if isinstance(name, str) else None
    holder: str | None = None
    if upstream is not None and upstream.limited:
        assert isinstance(name, str)
        limits = UpstreamLimits(upstream.max_concurrency, upstream.rpm, upstream.tpm)
        refused = await store.acquire_upstream(name, job.id, limits, RELAY_HOLD)
        if refused is not None:
            until, reason = refused
            failure = TaskFailure(
                "upstream_error",
                f"waited {settings.jobs.rate_limit_wait_max:g} s for the limits of upstream "
                f"{name!r} (rate_limit_wait_max)",
                retryable=False,
            )
            raise TaskWait(until, reason, failure)
        holder = name
    try:
        return await _call(job, value, settings, client, target, progress)
    finally:
        if holder is not None:
            used = (progress.usage or {}).get("total_tokens", 0)
            with contextlib.suppress(Exception):  # a hold ends by itself (RELAY_HOLD)
                await store.release_upstream(holder, job.id, used)


async def _call(
    job: Job,
    value: dict[str, Any],
    settings: Settings,
    client: httpx.AsyncClient,
    target: Target,
    progress: Progress,
) -> dict[str, Any]:
    relay = settings.relay
    wait_limits = value.get("wait_rate_limits", True) is True
    request = build_request(client, value, settings, target, progress.last_id)
    appender = Appender(job)
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
                return await consume(response, progress, appender, relay, wait_limits)
            finally:
                await response.aclose()
    except EgressRefused as exc:
        raise TaskFailure("upstream_error", str(exc), retryable=False) from exc
    except (httpx.HTTPError, _Silent) as exc:
        # What arrived before the break is kept: a retry resumes after it (Last-Event-ID), and
        # a relay that cannot resume reports exactly what was stored.
        await appender.flush()
        raise transport_failure(exc, progress, relay) from exc
    except TaskFailure:
        await appender.flush()
        raise
    except BaseException:
        await appender.abort()
        raise

"""Completion webhooks: a job's ``callback`` checked at submit, and the loop that delivers events.

Every node that runs workers (``serve``, ``worker``) runs one :class:`Deliverer`. It claims due
events from the store with a lease (so at most one attempt per event is in flight across every
node), sends each as a signed ``POST`` (:mod:`outlast.webhooks`) and records how it ended. It
is woken at once when this node records an event (a job ended here, or on another node of a
Redis store: commits are published), and otherwise re-checks the store now and then, as the
next retry falls due, or when events of a node that died have their lease run out.

An attempt's outcome: ``2xx`` delivered; ``410`` failed at once; anything else (a redirect, a
timeout, a refused connection) is retried on :data:`SCHEDULE` (scaled by ``[webhooks]
backoff_scale``, jittered), no sooner than a ``Retry-After`` of a ``429`` or ``503``, until
``retry_for`` has passed since the event: then failed. See ``docs/webhooks.md``.

On shutdown (:meth:`Deliverer.drain`) attempts in flight get the grace period; the rest are
cut and handed back, due at once, to be made again (same ``webhook-id``) after the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from outlast.config import EgressSettings, Settings
from outlast.egress import (
    EgressRefused,
    NoCookies,
    Target,
    check_url,
    egress_scope,
    guarded_transport,
    resolve_and_check,
)
from outlast.errors import Forbidden, LeaseLost, StoreError, Unprocessable
from outlast.health import Retry, StoreHealth
from outlast.metrics import Metrics
from outlast.models import JobRecord, rfc3339
from outlast.store.base import DeliveryResult, Store
from outlast.store.webhooks_logic import ALL_EVENTS
from outlast.webhooks import headers as signed_headers
from outlast.webhooks import secret_key

log = logging.getLogger("outlast.webhooks")

CALLBACK_FIELDS = frozenset({"url", "events"})
MAX_URL_LENGTH = 2048
# Seconds from one attempt to the next: attempt 1 failed -> about 5 s, then 30 s, 2 min, 10 min,
# then every hour until retry_for has passed. Each wait is jittered by +-20 %.
SCHEDULE = (5.0, 30.0, 120.0, 600.0, 3600.0)
JITTER = 0.2
# Attempts made at once by one node; more due events wait for a free slot. While attempts are in
# flight, due events are claimed once this many slots are free: one claim for a batch of them
# rather than a store write per attempt ended.
MAX_IN_FLIGHT = 64
CLAIM_BATCH = 16
# A lease outlives its attempt's timeout by this much, and is renewed while the attempt runs.
LEASE_MARGIN = 10.0
# How often the store is re-checked with nothing heard: events of other SQLite processes and
# leases of dead nodes are found this way (this node's own events wake the loop at once).
RECHECK_INTERVAL = 1.0
MAX_ERROR = 500
MAX_RETRY_AFTER = 86400.0


# -- the callback of a submission -------------------------------------------------------------


def _field_error(message: str) -> Unprocessable:
    return Unprocessable(f"callback: {message}", extra={"field": "callback"})


async def parse_callback(value: Any, settings: Settings) -> dict[str, Any]:
    """A submission's ``callback`` (a URL, or ``{url, events}``) checked against the config:
    ``{"url", "events"}``, or ``422`` naming ``callback``."""
    url: Any
    if isinstance(value, str):
        url, events = value, list(ALL_EVENTS)
    elif isinstance(value, dict):
        unknown = sorted(set(value) - CALLBACK_FIELDS)
        if unknown:
            raise _field_error(f"unknown field {unknown[0]!r} (known: url, events)")
        url = value.get("url")
        events = value.get("events", list(ALL_EVENTS))
        if not isinstance(events, list) or not events or not all(e in ALL_EVENTS for e in events):
            raise _field_error(f"events must be a non-empty list of {', '.join(ALL_EVENTS)}")
        events = list(dict.fromkeys(events))
    else:
        raise _field_error("must be a URL, or an object with url and events")
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise _field_error(f"url must be a URL of at most {MAX_URL_LENGTH} characters")
    hooks = settings.webhooks
    if not hooks.secret:
        raise _field_error("callbacks need a secret: set [webhooks] secret")
    try:
        await resolve_and_check(_target(url, settings))
    except Forbidden as exc:
        raise _field_error(str(exc)) from exc
    except Unprocessable as exc:
        raise _field_error(str(exc).removeprefix("callback ")) from exc
    return {"url": url, "events": events}


def _target(url: str, settings: Settings) -> Target:
    """Where a callback may go: a host in ``[webhooks]`` or ``[egress] allowed_hosts``, private
    addresses only with ``[webhooks] allow_private`` (``Forbidden`` / ``Unprocessable``)."""
    hooks = settings.webhooks
    allowed = EgressSettings(
        allowed_hosts=[*hooks.allowed_hosts, *settings.egress.allowed_hosts],
        allow_private=hooks.allow_private,
    )
    try:
        return check_url(url, allowed, field="callback")
    except Forbidden as exc:
        raise Forbidden(
            f"{exc}: a callback's host must be in [webhooks] or [egress] allowed_hosts",
            code="egress_denied",
        ) from exc


# -- delivery -----------------------------------------------------------------------------------


def delivery_client() -> httpx.AsyncClient:
    """The client every attempt of the node goes through: no redirects followed, no cookie
    jar, and connections only to addresses the attempt's egress policy allows."""
    return httpx.AsyncClient(
        transport=guarded_transport(),
        follow_redirects=False,
        cookies=NoCookies(),  # one receiver's cookies must never reach another
        trust_env=False,
    )


def retry_delay(attempts: int, scale: float) -> float:
    """Seconds to wait after the *attempts*-th failed attempt (jittered)."""
    base = SCHEDULE[min(attempts, len(SCHEDULE)) - 1] * scale
    return base * random.uniform(1 - JITTER, 1 + JITTER)


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    if raw.isdigit():
        return min(float(raw), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(raw).timestamp()
    except (TypeError, ValueError):
        return None
    return min(max(0.0, when - time.time()), MAX_RETRY_AFTER)


def payload(job: JobRecord) -> bytes:
    """The event's body: its type, when it happened, and the job as ``GET /v1/jobs/<id>``
    shows it (its callback as asked: url and events, without the delivery's state)."""
    callback = job.callback
    assert callback is not None
    data = job.to_json()
    data["callback"] = {"url": callback["url"], "events": callback["events"]}
    body = {"type": callback["type"], "timestamp": rfc3339(callback["event_at"]), "data": data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


class Deliverer:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        metrics: Metrics,
        client: httpx.AsyncClient,
        *,
        owner: str,
        health: StoreHealth | None = None,
    ) -> None:
        self.settings = settings
        self.hooks = settings.webhooks
        self.store = store
        self.metrics = metrics
        self.client = client
        self.owner = owner
        self.health = health or StoreHealth()
        self.lease = self.hooks.timeout + LEASE_MARGIN
        self.key = secret_key(self.hooks.secret) if self.hooks.secret else None
        self.in_flight: dict[str, asyncio.Task[None]] = {}
        self._stopping = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if self.key is None:
            return  # no secret: no callback could be submitted, nothing can be signed
        self._tasks.append(asyncio.create_task(self._claim_loop(), name="webhooks:claim"))
        self._tasks.append(asyncio.create_task(self._renew_loop(), name="webhooks:renew"))

    def stop_claiming(self) -> None:
        self._stopping.set()

    async def drain(self, grace: float) -> None:
        """Stop claiming; give attempts in flight *grace* seconds; cut and hand back the rest
        (due at once, made again after the restart with the same ``webhook-id``)."""
        self.stop_claiming()
        await asyncio.gather(*self._tasks[:1], return_exceptions=True)  # the claim loop
        tasks = list(self.in_flight.values())
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)
        cut = [job_id for job_id, task in self.in_flight.items() if not task.done()]
        for job_id in cut:
            self.in_flight[job_id].cancel()
        if cut:
            await asyncio.wait([self.in_flight[j] for j in cut if j in self.in_flight], timeout=5)
            try:
                handed = await self.store.release_deliveries(self.owner, cut)
                log.warning("grace over: handed back %d webhook attempts", handed)
            except StoreError as exc:  # their leases run out instead
                log.warning("could not hand back %d webhook attempts: %s", len(cut), exc)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- the loops --------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        retry = Retry()
        while not self._stopping.is_set():
            woken = self.store.watch_deliveries()  # before claiming: a commit during it wakes
            self._slot_freed.clear()
            free = MAX_IN_FLIGHT - len(self.in_flight)
            if self.in_flight and free < CLAIM_BATCH:
                free = 0  # claim when a batch of slots is free (woken as each one frees)
            claimed: list[JobRecord] = []
            wait = RECHECK_INTERVAL
            try:
                if free > 0:
                    claimed = await self.store.claim_deliveries(self.owner, free, self.lease)
                if free > 0 and len(claimed) < free:
                    due = await self.store.next_delivery_due()
                    if due is not None:
                        wait = min(wait, max(0.0, due - time.time()))
            except StoreError as exc:
                self.health.failed("webhook claim", exc)
                wait = retry.failed()
            else:
                retry.succeeded()
                self.health.succeeded("webhook claim")
            for job in claimed:
                task = asyncio.create_task(self._attempt(job), name=f"webhook:{job.id}")
                self.in_flight[job.id] = task
            if claimed and len(claimed) == free:
                continue  # more may be due: claim again once a slot frees (below, at once)
            if wait > 0:
                await self._wait(woken, wait)

    async def _wait(self, woken: asyncio.Event, timeout: float) -> None:
        waits = [asyncio.ensure_future(e.wait()) for e in (woken, self._slot_freed, self._stopping)]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    async def _renew_loop(self) -> None:
        interval = self.lease / 3
        while True:
            await asyncio.sleep(interval)
            ids = list(self.in_flight)
            if not ids:
                continue
            try:
                owned = set(await self.store.renew_deliveries(self.owner, ids, self.lease))
            except StoreError as exc:
                self.health.failed("webhook lease renewal", exc)
                continue
            for job_id in set(ids) - owned:
                task = self.in_flight.get(job_id)
                if task is not None and not task.done():
                    log.warning("job %s: webhook lease lost, cutting the attempt", job_id)
                    task.cancel()

    # -- one attempt ------------------------------------------------------------------------

    async def _attempt(self, job: JobRecord) -> None:
        callback = job.callback
        assert callback is not None
        started = time.monotonic()
        try:
            result = await self._send(job)
            self._record(job, result, time.monotonic() - started)
            try:
                await self.store.finish_delivery(job.id, self.owner, result)
            except LeaseLost:
                log.warning("job %s: webhook lease lost before the attempt was recorded", job.id)
            except StoreError as exc:  # the lease runs out and the attempt is made again
                self.health.failed("webhook finish", exc)
            else:
                if result.outcome == "delivered":
                    waited = max(0.0, time.time() - callback["event_at"])
                    self.metrics.webhook_latency.observe(waited)
        finally:
            self.in_flight.pop(job.id, None)
            self._slot_freed.set()

    async def _send(self, job: JobRecord) -> DeliveryResult:
        callback = job.callback
        assert callback is not None and self.key is not None
        attempts = callback["attempts"] + 1
        status: int | None = None
        retry_after: float | None = None
        try:
            target = _target(callback["url"], self.settings)
            await resolve_and_check(target)
            body = payload(job)
            request_headers = signed_headers(self.key, callback["id"], body)
            with egress_scope(target):
                async with self.client.stream(
                    "POST",
                    callback["url"],
                    content=body,
                    headers=request_headers,
                    timeout=self.hooks.timeout,
                ) as response:
                    status = response.status_code
                    if status in (429, 503):
                        retry_after = _retry_after(response)
        except (Forbidden, Unprocessable) as exc:
            return self._failed_attempt(job, attempts, f"refused by egress rules: {exc}")
        except httpx.TimeoutException:
            return self._failed_attempt(job, attempts, "timed out")
        except (httpx.HTTPError, EgressRefused, OSError) as exc:
            return self._failed_attempt(job, attempts, f"{type(exc).__name__}: {exc}")
        if 200 <= status < 300:
            return DeliveryResult("delivered", status)
        if status == 410:
            return DeliveryResult("failed", status, "410 Gone: the receiver asked to stop")
        return self._failed_attempt(job, attempts, f"HTTP {status}", status, retry_after)

    def _failed_attempt(
        self,
        job: JobRecord,
        attempts: int,
        error: str,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> DeliveryResult:
        """Retried on the schedule (no sooner than *retry_after*), or failed once
        ``retry_for`` has passed since the event."""
        callback = job.callback
        assert callback is not None
        now = time.time()
        delay = retry_delay(attempts, self.hooks.backoff_scale)
        if retry_after is not None:
            delay = max(delay, retry_after)
        retry_at = now + delay
        error = error[:MAX_ERROR]
        if retry_at > callback["since"] + self.hooks.retry_for:
            return DeliveryResult("failed", status, f"{error}; gave up after retry_for")
        return DeliveryResult("retry", status, error, retry_at)

    def _record(self, job: JobRecord, result: DeliveryResult, seconds: float) -> None:
        callback = job.callback
        assert callback is not None
        self.metrics.webhook_attempts.labels(result.outcome).inc()
        log.info(
            "webhook attempt job=%s webhook_id=%s attempt=%d status=%s duration=%.3fs outcome=%s%s",
            job.id,
            callback["id"],
            callback["attempts"] + 1,
            result.status if result.status is not None else "-",
            seconds,
            result.outcome,
            f" error={result.error!r}" if result.error else "",
        )


async def refresh_gauge(store: Store, metrics: Metrics) -> None:
    """The pending callbacks gauge, read from the store when /metrics is scraped."""
    with contextlib.suppress(StoreError):
        metrics.webhooks_pending.set(await store.pending_deliveries())

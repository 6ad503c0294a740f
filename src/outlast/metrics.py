"""Prometheus metrics, in a registry of their own per application (tests build many apps)."""

from __future__ import annotations

import bisect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from outlast.logs import AccessLog, job_id_of

log = logging.getLogger("outlast.metrics")

# Request latencies from sub-millisecond appends to long-polls that wait out their timeout.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
)


# Job latencies, from a no-op task to an LLM call of several minutes.
JOB_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
)

ScrapeHook = Callable[[], Awaitable[None]]


class _WithPid(CollectorRegistry):
    """A registry's samples, each with a ``pid`` label: the processes of ``serve --workers N``
    keep their own counts, and a scrape of the shared port is answered by one of them."""

    def __init__(self, registry: CollectorRegistry, pid: int) -> None:
        super().__init__(auto_describe=False)
        self.registry = registry
        self.pid = str(pid)

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            family.samples = [
                sample._replace(labels={**sample.labels, "pid": self.pid})
                for sample in family.samples
            ]
            yield family


class Metrics:
    def __init__(self, *, pid_label: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._exposed: CollectorRegistry = (
            _WithPid(self.registry, os.getpid()) if pid_label else self.registry
        )
        # Run before each scrape: gauges read from the store are fresh when they are read.
        self._scrape_hooks: list[ScrapeHook] = []
        r = self.registry
        # outlast_http_requests_total, outlast_http_request_duration_seconds and
        # outlast_http_requests_in_progress: counted in plain numbers, see HTTPStats.
        self.http = HTTPStats()
        r.register(self.http)
        self.stream_appends = Counter(
            "outlast_stream_appends", "Appends stored in durable streams", registry=r
        )
        self.stream_append_bytes = Counter(
            "outlast_stream_append_bytes", "Bytes appended to durable streams", registry=r
        )
        self.jobs = Gauge(
            "outlast_jobs",
            "Jobs in the store by queue and state (every node sharing the store)",
            ["queue", "state"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "outlast_queue_depth",
            "Jobs waiting in the queue (queued, delayed or waiting to retry)",
            ["queue"],
            registry=r,
        )
        self.queue_capacity = Gauge(
            "outlast_queue_capacity",
            "Waiting jobs the queue admits before answering 429",
            ["queue"],
            registry=r,
        )
        self.worker_running = Gauge(
            "outlast_worker_jobs_running",
            "Jobs running in this process",
            ["queue"],
            registry=r,
        )
        self.jobs_submitted = Counter(
            "outlast_jobs_submitted", "Jobs admitted", ["queue", "task"], registry=r
        )
        self.jobs_rejected = Counter(
            "outlast_jobs_rejected", "Submissions refused", ["queue", "reason"], registry=r
        )
        self.job_attempts = Counter(
            "outlast_job_attempts",
            "Job attempts ended, by outcome",
            ["queue", "task", "outcome"],
            registry=r,
        )
        self.relay_tokens = Counter(
            "outlast_relay_tokens",
            "Tokens upstreams reported for relays (usage), by upstream, model and kind",
            ["upstream", "model", "kind"],
            registry=r,
        )
        self.upstream_waits = Counter(
            "outlast_upstream_waits",
            "Relays handed back to their queue to wait for an upstream's limits",
            ["upstream", "reason"],
            registry=r,
        )
        self.job_run_seconds = Histogram(
            "outlast_job_run_seconds",
            "Time an attempt ran",
            ["queue", "task"],
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.job_wait_seconds = Histogram(
            "outlast_job_wait_seconds",
            "Time from due (submitted, delay or backoff over) to started",
            ["queue"],
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.job_seconds = Histogram(
            "outlast_job_duration_seconds",
            "Time from submitted to terminal, by final state",
            ["queue", "task", "state"],
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.readers = Gauge(
            "outlast_stream_readers", "Live stream readers connected", ["mode"], registry=r
        )
        self.webhook_attempts = Counter(
            "outlast_webhook_attempts",
            "Completion webhook attempts by outcome (delivered, retry, failed)",
            ["outcome"],
            registry=r,
        )
        self.webhooks_pending = Gauge(
            "outlast_webhooks_pending",
            "Completion webhook events not yet delivered nor failed (every node sharing the store)",
            registry=r,
        )
        self.webhook_latency = Histogram(
            "outlast_webhook_delivery_seconds",
            "Time from a job's end to its webhook event delivered (2xx)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def on_scrape(self, hook: ScrapeHook) -> None:
        self._scrape_hooks.append(hook)

    def render(self) -> Response:
        return Response(generate_latest(self._exposed), media_type=CONTENT_TYPE_LATEST)

    async def endpoint(self, request: Request) -> Response:
        for hook in self._scrape_hooks:
            try:
                await hook()
            except Exception:  # a scrape still answers, with the last known values
                log.exception("refreshing metrics before a scrape failed")
        return self.render()


# Route templates are the only route labels: a label taken from the path itself would make a
# new series for every made-up path anyone sends (authenticated or not).
UNMATCHED = "unmatched"
_FIXED_ROUTES = frozenset(
    ["/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/jobs", "/v1/queues", "/v1/proxy"]
)
_JOB_ACTIONS = frozenset(["cancel", "events"])


def route_of(path: str) -> str:
    """The route template a request path matches, or :data:`UNMATCHED`."""
    if path.startswith("/v1/stream/"):
        return "/v1/stream/{name}"
    if path in _FIXED_ROUTES:
        return path
    parts = path.split("/")  # "", "v1", "jobs", id, ...
    if path.startswith("/v1/jobs/") and parts[3]:
        if len(parts) == 4:
            return "/v1/jobs/{id}"
        if len(parts) == 5 and parts[4] in _JOB_ACTIONS:
            return "/v1/jobs/{id}/" + parts[4]
    if path.startswith("/v1/upstreams/") and parts[3] and len(parts) >= 5:
        return "/v1/upstreams/{name}/{path}"
    return UNMATCHED


class _RouteStats:
    """One (method, route)'s request figures, as plain numbers (see :class:`HTTPStats`)."""

    __slots__ = ("buckets", "by_status", "in_progress", "seconds")

    def __init__(self) -> None:
        self.in_progress = 0
        self.seconds = 0.0
        # Observations per latency bucket (not cumulative), the last one for "+Inf".
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.by_status: dict[int, int] = {}

    def observe(self, status: int, seconds: float) -> None:
        self.seconds += seconds
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1


class HTTPStats(Collector):
    """The HTTP request metrics, kept as plain numbers and rendered at each scrape.

    A prometheus_client child costs a lock and a few calls per update, and every request makes
    four updates; here a request costs a few additions. Only the event loop thread updates them.
    """

    # Bucket bounds as prometheus_client writes them ("0.0005", "1.0").
    _LE = [repr(float(b)) for b in LATENCY_BUCKETS] + ["+Inf"]

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], _RouteStats] = {}

    def route(self, method: str, route: str) -> _RouteStats:
        stats = self.routes.get((method, route))
        if stats is None:
            stats = self.routes[(method, route)] = _RouteStats()
        return stats

    def collect(self) -> Iterator[Metric]:
        total = CounterMetricFamily(
            "outlast_http_requests", "HTTP requests answered", labels=["method", "route", "status"]
        )
        seconds = HistogramMetricFamily(
            "outlast_http_request_duration_seconds",
            "Time to answer an HTTP request (to the end of its body)",
            labels=["method", "route"],
        )
        in_progress = GaugeMetricFamily(
            "outlast_http_requests_in_progress",
            "HTTP requests being answered",
            labels=["method", "route"],
        )
        for (method, route), stats in list(self.routes.items()):
            in_progress.add_metric([method, route], stats.in_progress)
            for status, n in list(stats.by_status.items()):
                total.add_metric([method, route, str(status)], n)
            cumulative, buckets = 0, []
            for le, n in zip(self._LE, stats.buckets, strict=True):
                cumulative += n
                buckets.append((le, float(cumulative)))
            if cumulative:
                seconds.add_metric([method, route], buckets, stats.seconds)
        yield total
        yield seconds
        yield in_progress


class MetricsMiddleware:
    """Counts, times and (with an access log) logs every HTTP request; streaming responses are
    timed to their end."""

    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: AccessLog | None = None) -> None:
        self.app = app
        self.http = metrics.http
        self.access_log = access_log
        # Streams are most of the traffic, and one route: their stats per method, at hand.
        self._streams: dict[str, _RouteStats] = {}

    def _route_stats(self, method: str, path: str) -> _RouteStats:
        if not path.startswith("/v1/stream/"):
            return self.http.route(method, route_of(path))
        stats = self._streams.get(method)
        if stats is None:
            stats = self._streams[method] = self.http.route(method, route_of(path))
        return stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        stats = self._route_stats(scope["method"], scope["path"])
        access_log = self.access_log
        if access_log is not None and not access_log.enabled():
            access_log = None
        # Only job routes answer with an Outlast-Job-Id header (a job stream's id is its path).
        job_header = access_log is not None and not scope["path"].startswith("/v1/stream/")
        status = 500
        sent = 0
        job_id: str | None = None
        started = time.perf_counter()

        async def send_recording(message: Message) -> None:
            nonlocal status, sent, job_id
            if message["type"] == "http.response.start":
                status = message["status"]
                if job_header:
                    job_id = _job_id_header(message)
            elif access_log is not None:
                sent += len(message.get("body", b""))
            await send(message)

        stats.in_progress += 1
        try:
            await self.app(scope, receive, send_recording)
        finally:
            stats.in_progress -= 1
            elapsed = time.perf_counter() - started
            stats.observe(status, elapsed)
            if access_log is not None:
                access_log.request(scope, status, elapsed, sent, job_id)


def _job_id_header(message: Message) -> str | None:
    """The job an answer names: its ``Outlast-Job-Id``, else its ``Location`` (a submission's
    ``202`` points at the new job that way)."""
    located = None
    for name, value in message.get("headers", ()):
        if name == b"outlast-job-id":
            return bytes(value).decode("latin-1")
        if name == b"location":
            located = job_id_of(bytes(value).decode("latin-1").split("?", 1)[0])
    return located

"""Prometheus metrics, in a registry of their own per application (tests build many apps)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Run before each scrape: gauges read from the store are fresh when they are read.
        self._scrape_hooks: list[ScrapeHook] = []
        r = self.registry
        self.requests = Counter(
            "outlast_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "outlast_http_request_duration_seconds",
            "Time to answer an HTTP request (to the end of its body)",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_progress = Gauge(
            "outlast_http_requests_in_progress",
            "HTTP requests being answered",
            ["method", "route"],
            registry=r,
        )
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

    def on_scrape(self, hook: ScrapeHook) -> None:
        self._scrape_hooks.append(hook)

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def endpoint(self, request: Request) -> Response:
        for hook in self._scrape_hooks:
            try:
                await hook()
            except Exception:  # a scrape still answers, with the last known values
                log.exception("refreshing metrics before a scrape failed")
        return self.render()


def route_of(path: str) -> str:
    """A low-cardinality label for a request path."""
    if path.startswith("/v1/stream/"):
        return "/v1/stream/{name}"
    if path.startswith("/v1/jobs/"):
        return "/v1/jobs/{id}" + ("/" + path.rsplit("/", 1)[-1] if path.count("/") > 3 else "")
    if path.startswith("/v1/upstreams/"):
        return "/v1/upstreams/{name}/{path}"
    if path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/jobs", "/v1/proxy"):
        return path
    return "other"


class MetricsMiddleware:
    """Counts and times every HTTP request; streaming responses are timed to their end."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # Label lookups cost more than the observations; keep the children per (method, route).
        self._children: dict[tuple[str, str], tuple[Gauge, Histogram]] = {}
        self._counters: dict[tuple[str, str, int], Counter] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        route = route_of(scope["path"])
        status = 500
        key = (method, route)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.metrics.in_progress.labels(method, route),
                self.metrics.request_seconds.labels(method, route),
            )
        gauge, seconds = children
        started = time.perf_counter()

        async def send_recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        gauge.inc()
        try:
            await self.app(scope, receive, send_recording)
        finally:
            gauge.dec()
            seconds.observe(time.perf_counter() - started)
            counted = self._counters.get((method, route, status))
            if counted is None:
                counted = self._counters[(method, route, status)] = self.metrics.requests.labels(
                    method, route, str(status)
                )
            counted.inc()

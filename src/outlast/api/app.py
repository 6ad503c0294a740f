"""The ASGI application: routes plus the middleware every request passes through."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from outlast.api.error_response import HANDLED, handle_error
from outlast.api.jobs import JobsAPI, LocalCanceller
from outlast.api.middleware import AuthMiddleware, BrowserGuard, HeadersMiddleware
from outlast.api.openapi import openapi_endpoint
from outlast.api.ops import ops_routes
from outlast.api.streams import StreamsEndpoint
from outlast.api.ui import ui_routes
from outlast.api.upstreams import UpstreamsAPI
from outlast.config import Settings
from outlast.executors.registry import Registry
from outlast.lifecycle import Lifecycle
from outlast.logs import AccessLog
from outlast.metrics import Metrics, MetricsMiddleware
from outlast.store.base import Store


def create_app(
    settings: Settings,
    store: Store,
    lifecycle: Lifecycle,
    metrics: Metrics,
    registry: Registry,
    worker: LocalCanceller | None,
) -> ASGIApp:
    streams = StreamsEndpoint(settings, store, lifecycle, metrics)
    jobs = JobsAPI(settings, store, registry, lifecycle, metrics, worker)
    upstreams = UpstreamsAPI(jobs)
    routes = [
        *ops_routes(lifecycle),
        Route("/metrics", metrics.endpoint, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint, methods=["GET"]),
        *jobs.routes(),
        *upstreams.routes(),
        *ui_routes(),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers=dict.fromkeys(HANDLED, handle_error),
    )
    app.state.settings = settings
    app.state.store = store
    app.state.lifecycle = lifecycle
    app.state.metrics = metrics
    wrapped: ASGIApp = _HotPathsFirst(app, streams, jobs)
    if jobs.links is not None:
        wrapped = AuthMiddleware(wrapped, settings.auth, jobs.links)
    wrapped = BrowserGuard(wrapped, settings)
    access_log = AccessLog() if settings.server.access_log else None
    wrapped = MetricsMiddleware(wrapped, metrics, access_log)
    return HeadersMiddleware(wrapped, settings.cors)


class _HotPathsFirst:
    """Sends ``/v1/stream/*`` straight to the streams endpoint, and ``POST /v1/jobs`` straight
    to the submit handler: the hot paths skip Starlette's router and its exception middleware
    (each renders its own errors, as the exception handlers would)."""

    def __init__(self, app: ASGIApp, streams: StreamsEndpoint, jobs: JobsAPI) -> None:
        self.app = app
        self.streams = streams
        self.jobs = jobs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path.startswith("/v1/stream/"):
                await self.streams(scope, receive, send)
                return
            if path == "/v1/jobs" and scope["method"] == "POST":
                await self.jobs.submit_endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)

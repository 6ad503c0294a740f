"""The ASGI application: routes plus the middleware every request passes through."""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from outlast.api.jobs import JobsAPI, LocalCanceller
from outlast.api.middleware import AuthMiddleware, HeadersMiddleware
from outlast.api.openapi import openapi_endpoint
from outlast.api.ops import ops_routes
from outlast.api.streams import StreamsEndpoint
from outlast.api.ui import ui_routes
from outlast.api.upstreams import UpstreamsAPI
from outlast.config import Settings
from outlast.errors import RequestError, StoreUnavailable
from outlast.executors.registry import Registry
from outlast.lifecycle import Lifecycle
from outlast.logs import AccessLog
from outlast.metrics import Metrics, MetricsMiddleware
from outlast.store.base import Store

log = logging.getLogger("outlast.api")


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


async def _request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return JSONResponse(exc.body(), exc.status, headers=exc.headers)


async def _unavailable(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StoreUnavailable)
    retry = str(max(1, round(exc.retry_after)))
    return error_response(503, "unavailable", str(exc), {"Retry-After": retry})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal", "internal error; see the server log")


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
        exception_handlers={
            RequestError: _request_error,
            StoreUnavailable: _unavailable,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
    app.state.settings = settings
    app.state.store = store
    app.state.lifecycle = lifecycle
    app.state.metrics = metrics
    wrapped: ASGIApp = _StreamsFirst(app, streams)
    if jobs.links is not None:
        wrapped = AuthMiddleware(wrapped, settings.auth, jobs.links)
    access_log = AccessLog() if settings.server.access_log else None
    wrapped = MetricsMiddleware(wrapped, metrics, access_log)
    return HeadersMiddleware(wrapped, settings.cors)


class _StreamsFirst:
    """Sends ``/v1/stream/*`` straight to the streams endpoint: the hot path skips the router."""

    def __init__(self, app: ASGIApp, streams: StreamsEndpoint) -> None:
        self.app = app
        self.streams = streams

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/stream/"):
            await self.streams(scope, receive, send)
        else:
            await self.app(scope, receive, send)

"""Operational endpoints: liveness, and readiness (not while draining, nor while the store
cannot be reached)."""

from __future__ import annotations

import os

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from outlast.lifecycle import Lifecycle


def ops_routes(lifecycle: Lifecycle) -> list[Route]:
    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        if not lifecycle.accepting:
            return JSONResponse(
                {"error": {"code": "draining", "message": "shutting down"}},
                503,
                headers={"Retry-After": "5"},
            )
        if not lifecycle.store_health.reachable:
            return JSONResponse(
                {"error": {"code": "store_unreachable", "message": "the store cannot be reached"}},
                503,
                headers={"Retry-After": "5"},
            )
        # Each process of `serve --workers N` answers for itself; the pid says which one did.
        return JSONResponse({"status": "ready", "pid": os.getpid()})

    return [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
    ]

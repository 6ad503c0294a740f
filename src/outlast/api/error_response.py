"""Every error answer, rendered in one place as ``{"error": {"code", "message"}}``.

Used by the app's exception handlers and by the streams endpoint, which the top-level dispatcher
reaches without Starlette's router (and so without its exception handlers).
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from outlast.errors import RequestError, StoreUnavailable

log = logging.getLogger("outlast.api")


def error_response(exc: Exception, scope: Scope) -> Response:
    """The answer for *exc*: its own status for request errors, ``503`` with ``Retry-After``
    when the store is unreachable, ``500`` (logged) for anything unexpected."""
    if isinstance(exc, RequestError):
        return JSONResponse(exc.body(), exc.status, headers=exc.headers)
    if isinstance(exc, StoreUnavailable):
        retry = str(max(1, round(exc.retry_after)))
        return _json(503, "unavailable", str(exc), {"Retry-After": retry})
    if isinstance(exc, HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _json(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))
    log.error("unhandled error on %s %s", scope["method"], scope["path"], exc_info=exc)
    return _json(500, "internal", "internal error; see the server log")


async def handle_error(request: Request, exc: Exception) -> Response:
    """:func:`error_response` as a Starlette exception handler."""
    return error_response(exc, request.scope)


# The exception classes the app hands to :func:`handle_error`. ``Exception`` is handled (and then
# re-raised for the server's log) by Starlette's outermost middleware; the others are answered
# inside the router.
HANDLED = (RequestError, StoreUnavailable, HTTPException, Exception)


def _json(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)

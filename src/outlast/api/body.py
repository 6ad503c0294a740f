"""Request bodies: read whole, within a size limit, and parsed as strict JSON.

Bodies are read from the raw ASGI ``receive`` (the streams append path has no
:class:`~starlette.requests.Request`); routes pass ``request.receive``. Nothing else reads
the body first, so Starlette's own body cache is not needed.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

from outlast.errors import BadRequest, PayloadTooLarge


async def read_body(receive: Receive, declared: str | bytes | None, limit: int) -> bytes:
    """The whole body; ``413`` past *limit* bytes (at once when the declared
    ``Content-Length`` says so), :class:`ClientDisconnect` if the client goes away first."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        if not message.get("more_body", False):
            if not chunks:
                return chunk  # the whole body in one message: the usual case
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)


async def read_json(request: Request, limit: int) -> Any:
    """The request's body as JSON (``400 invalid_json`` when it is not)."""
    return parse_json(
        await read_body(request.receive, request.headers.get("content-length"), limit)
    )


def parse_json(data: bytes) -> Any:
    """Strict JSON: no ``NaN`` or ``Infinity`` (Python accepts them, JSON does not)."""
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", code="invalid_json") from exc
    except RecursionError as exc:
        raise BadRequest("body is nested too deeply", code="invalid_json") from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body larger than {limit} bytes")

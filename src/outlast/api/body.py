"""Request bodies: read whole, within a size limit, and parsed as JSON by the boundary's rules
(:func:`outlast.boundary.parse_json`).

Bodies are read from the raw ASGI ``receive`` (the streams append path has no
:class:`~starlette.requests.Request`); routes pass ``request.receive``. Nothing else reads
the body first, so Starlette's own body cache is not needed.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

from outlast.boundary import parse_json, whole_number
from outlast.errors import PayloadTooLarge


async def read_body(receive: Receive, declared: str | bytes | None, limit: int) -> bytes:
    """The whole body; ``413`` past *limit* bytes (at once when the declared
    ``Content-Length`` says so), :class:`ClientDisconnect` if the client goes away first."""
    if isinstance(declared, bytes):
        declared = declared.decode("latin-1")
    size = None if declared is None else whole_number(declared)
    if size is not None and size > limit:
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


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body larger than {limit} bytes")

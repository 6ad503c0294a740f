"""HTTP/1.1 connections with limits on what one client may hold: uvicorn's httptools protocol
plus a cap on request header size and count (``431``), a deadline for a request's headers,
a cap on open connections, and an abort for writes that never drain at shutdown.

The parser (llhttp, through httptools) keeps a header's name and value in memory until the line
ends, so a header that never ends grows without bound: the size cap counts the bytes fed to the
parser while a request's head is read, and refuses before feeding more. uvicorn's own
``limit_concurrency`` answers ``503`` only once a request's headers are complete, which a
slow-header client never lets happen, so the connection cap is checked when a connection opens.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from outlast.errors import Refusal

log = logging.getLogger("outlast.connections")

# Refusals under attack come in floods: one warning per this many seconds is enough.
WARN_INTERVAL = 10.0

# What a connection is refused with (the OpenAPI document lists them on every operation).
REQUEST_TIMEOUT = Refusal(408, "request_timeout")  # headers not complete within header_timeout
HEADERS_TOO_LARGE = Refusal(431, "request_header_fields_too_large")  # bytes or count
TOO_MANY_CONNECTIONS = Refusal(503, "too_many_connections")  # with Retry-After
# Too many connections is a moment's overload: a client may come back after this many seconds.
TOO_MANY_CONNECTIONS_RETRY_AFTER = 1


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int
    max_header_count: int
    header_timeout: float
    max_connections: int


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that is refused."""


class _Warnings:
    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def warn(self, kind: str, message: str) -> None:
        now = time.monotonic()
        if now - self.last.get(kind, -WARN_INTERVAL) >= WARN_INTERVAL:
            self.last[kind] = now
            log.warning("%s (at most one such warning every %.0f s)", message, WARN_INTERVAL)


_warnings = _Warnings()


class LimitedHttpProtocol(HttpToolsProtocol):
    """One connection. A request's head (request line and headers) is read under limits; the
    body and the response are uvicorn's business."""

    limits: ConnectionLimits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # True from the end of one request until the headers of the next are complete.
        self._in_head = True
        self._head_bytes = 0
        self._head_count = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[Refusal, str] | None = None

    # -- connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            _warnings.warn(
                "connections",
                f"refusing a connection: {self.limits.max_connections} connections are open "
                "([server] max_connections)",
            )
            self._refuse(TOO_MANY_CONNECTIONS, "too many open connections; retry later")
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def abort_if_not_drained(self) -> bool:
        """Abort the connection if bytes written to it are still waiting for the client."""
        if self.transport is None or self.transport.get_write_buffer_size() == 0:
            return False
        self.transport.abort()
        return True

    # -- reading a request's head -------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        while data and not self.transport.is_closing():
            if self._in_head:
                room = self.limits.max_header_bytes - self._head_bytes
                if room <= 0:
                    self._refuse_head_too_large()
                    return
                if len(data) > room:
                    piece, data = data[:room], data[room:]
                else:
                    piece, data = data, b""  # the usual case: no copy
                self._head_bytes += len(piece)
            else:
                piece, data = data, b""
            try:
                self.parser.feed_data(piece)
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
                return
            except httptools.HttpParserError:
                if self._refusal is not None:
                    self._refuse(*self._refusal)
                else:
                    self.logger.warning("Invalid HTTP request received.")
                    self.send_400_response("Invalid HTTP request received.")
                return

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_count = 0
        if self._head_timer is None:
            self._arm_head_timer()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_count += 1
        if self._head_count > self.limits.max_header_count:
            self._refusal = (
                HEADERS_TOO_LARGE,
                f"more than {self.limits.max_header_count} request header fields",
            )
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def _refuse_head_too_large(self) -> None:
        _warnings.warn(
            "headers", "refusing a request whose headers exceed [server] max_header_bytes"
        )
        self._refuse(
            HEADERS_TOO_LARGE, f"request headers larger than {self.limits.max_header_bytes} bytes"
        )

    # -- the head's deadline ------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_bytes == 0 and (self.cycle is None or self.cycle.response_complete):
            self.transport.close()  # nothing was asked: nothing to answer
            return
        self._refuse(REQUEST_TIMEOUT, "request headers not received in time")

    # -- answering a refusal ------------------------------------------------------------------

    def _refuse(self, refusal: Refusal, message: str) -> None:
        """Answer *refusal* with an error body and close; mid-response, just close."""
        self._cancel_head_timer()
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(_error_response(refusal, message))
        self.transport.close()


def _error_response(refusal: Refusal, message: str) -> bytes:
    body = json.dumps({"error": {"code": refusal.code, "message": message}}).encode()
    head = [
        STATUS_LINE[refusal.status],
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"retry-after: %d\r\n" % TOO_MANY_CONNECTIONS_RETRY_AFTER if refusal.status == 503 else b"",
        b"connection: close\r\n\r\n",
    ]
    return b"".join(head) + body


def limited_protocol(limits: ConnectionLimits) -> type[LimitedHttpProtocol]:
    """The protocol class uvicorn builds each connection from, with *limits*."""
    return type("OutlastHttpProtocol", (LimitedHttpProtocol,), {"limits": limits})


def abort_stalled(connections: Iterable[object]) -> int:
    """Abort every connection whose written bytes have not drained; returns how many."""
    aborted = 0
    for connection in list(connections):
        if isinstance(connection, LimitedHttpProtocol) and connection.abort_if_not_drained():
            aborted += 1
    return aborted

"""``/v1/stream/<name>``: the Durable Streams protocol (create, append, close, delete, HEAD, and
reads in catch-up, long-poll and SSE modes).

The request is parsed and validated here (headers, offsets, JSON bodies); the rules about stream
state live in :mod:`outlast.store.streams_logic`, executed atomically by the store.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
from prometheus_client import Gauge
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from outlast.api import cursor
from outlast.api.sse_response import SSEResponse
from outlast.config import Settings
from outlast.errors import (
    BadRequest,
    Conflict,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestError,
    StoreError,
    StoreUnavailable,
)
from outlast.lifecycle import Lifecycle
from outlast.metrics import Metrics
from outlast.store.base import (
    AppendSpec,
    CreateSpec,
    Producer,
    ReadResult,
    Store,
    StreamInfo,
    format_offset,
    is_json_type,
    media_type,
    parse_offset,
)

log = logging.getLogger("outlast.api.streams")

PREFIX = "/v1/stream/"
JOBS_NAMESPACE = "jobs/"
ALLOWED_METHODS = "GET, HEAD, PUT, POST, DELETE, OPTIONS"
_TTL_RE = re.compile(r"0|[1-9][0-9]*")
_INT_RE = re.compile(r"0|[1-9][0-9]*")
_RFC3339_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
MAX_SAFE_INTEGER = 2**53 - 1
DEFAULT_CONTENT_TYPE = "application/octet-stream"
NOW = -1  # read position meaning "the tail, whatever it is"
CATCH_UP_CACHE = "public, max-age=60, stale-while-revalidate=300"
# Streams whose last SSE data event is kept for the next reader at the same position.
SSE_ENCODED_STREAMS = 256


def _header(request: Request, name: str) -> str | None:
    return request.headers.get(name)


def _parse_ttl(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not _TTL_RE.fullmatch(raw):
        raise BadRequest("Stream-TTL must be a non-negative integer without sign or leading zeros")
    return int(raw)


def _parse_expires_at(raw: str | None) -> float | None:
    if raw is None:
        return None
    text = raw.strip()
    if not _RFC3339_RE.fullmatch(text):
        raise BadRequest("Stream-Expires-At must be an RFC 3339 timestamp")
    try:
        parsed = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadRequest("Stream-Expires-At must be an RFC 3339 timestamp") from exc
    return parsed.timestamp()


def _format_expires_at(value: float) -> str:
    return datetime.fromtimestamp(value, UTC).isoformat().replace("+00:00", "Z")


def _parse_bool_header(raw: str | None, name: str) -> bool:
    if raw is None:
        return False
    value = raw.strip().lower()
    if value == "true":
        return True
    if value == "false":
        return False
    raise BadRequest(f"{name} must be 'true' or 'false'")


def _raw_headers(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers by (lower-case) name; the first of repeated headers wins, as with
    Starlette's ``Headers.get``."""
    return dict(reversed(scope["headers"]))


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("latin-1")


def _parse_producer(headers: dict[bytes, bytes]) -> Producer | None:
    pid = _text(headers.get(b"producer-id"))
    epoch = _text(headers.get(b"producer-epoch"))
    seq = _text(headers.get(b"producer-seq"))
    given = [v is not None for v in (pid, epoch, seq)]
    if not any(given):
        return None
    if not all(given):
        raise BadRequest("Producer-Id, Producer-Epoch and Producer-Seq must be sent together")
    assert pid is not None and epoch is not None and seq is not None
    if not pid.strip():
        raise BadRequest("Producer-Id must not be empty")
    values = []
    for name, raw in (("Producer-Epoch", epoch), ("Producer-Seq", seq)):
        raw = raw.strip()
        if not _INT_RE.fullmatch(raw) or int(raw) > MAX_SAFE_INTEGER:
            raise BadRequest(f"{name} must be an integer from 0 to 2^53-1")
        values.append(int(raw))
    return Producer(pid, values[0], values[1])


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_messages(body: bytes, *, allow_empty: bool) -> list[bytes]:
    """The messages a JSON body holds: one level of a top-level array is flattened.

    A single value is stored as it was sent (it is valid JSON: it just parsed); elements of an
    array are re-serialised compactly, as they need cutting apart anyway.
    """
    stripped = body.strip()
    if not stripped.startswith(b"["):
        # The common case, a single value: orjson validates it several times faster. It accepts
        # a subset of what the json module accepts (UTF-8 only, no lone surrogates, no BOM, no
        # numbers that overflow a double), so when it refuses, the json module decides below.
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
        else:
            return [stripped]
    try:
        value = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(value, list):
        return [body.strip()]
    if not value and not allow_empty:
        raise BadRequest("an empty JSON array appends nothing", code="empty_append")
    return [json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode() for item in value]


def _unit(content_type: str, body: bytes, *, allow_empty_json: bool) -> tuple[bytes, int] | None:
    if is_json_type(content_type):
        messages = _json_messages(body, allow_empty=allow_empty_json)
        if not messages:
            return None
        return b",".join(messages), len(messages)
    return (body, 1) if body else None


class StreamsEndpoint:
    """An ASGI endpoint for every method on ``/v1/stream/{name}``."""

    def __init__(
        self, settings: Settings, store: Store, lifecycle: Lifecycle, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.lifecycle = lifecycle
        self.max_append = settings.limits.append_bytes
        self.max_name = settings.limits.stream_name_length
        self._appends = metrics.stream_appends
        self._append_bytes = metrics.stream_append_bytes
        self._stop_task: asyncio.Future[Any] | None = None
        # Readers waiting for data, and those of them that stopping readers cancelled.
        self._waiting: set[asyncio.Task[Any]] = set()
        self._cancelled_by_stop: set[asyncio.Task[Any]] = set()
        # The last SSE data event encoded per stream: every reader at that position shares it.
        self._sse_encoded: dict[str, tuple[tuple[int, int, int, bool], bytes]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Reached straight from the top-level dispatcher (the hot path skips the router), so
        # this endpoint renders its own errors.
        if scope["method"] == "POST":
            await self.append(scope, receive, send)
            return
        try:
            response = await self._dispatch(scope, receive)
        except Exception as exc:
            response = self._error(exc, scope)
        await response(scope, receive, send)

    def _error(self, exc: Exception, scope: Scope) -> Response:
        if isinstance(exc, RequestError):
            return JSONResponse(exc.body(), exc.status, headers=exc.headers)
        if isinstance(exc, StoreUnavailable):
            return JSONResponse(
                {"error": {"code": "unavailable", "message": str(exc)}},
                503,
                headers={"Retry-After": str(max(1, round(exc.retry_after)))},
            )
        log.error("unhandled error on %s %s", scope["method"], scope["path"], exc_info=exc)
        return JSONResponse(
            {"error": {"code": "internal", "message": "internal error; see the server log"}},
            500,
        )

    def _name(self, scope: Scope) -> str:
        name: str = scope["path"][len(PREFIX) :]
        if not name or len(name) > self.max_name:
            raise BadRequest(f"stream name must be 1 to {self.max_name} characters")
        return name

    async def _dispatch(self, scope: Scope, receive: Receive) -> Response | SSEResponse:
        request = Request(scope, receive)
        name = self._name(scope)
        method = request.method
        if method == "GET":
            return await self.get(request, name)
        if method == "HEAD":
            return await self.head(name)
        if name.startswith(JOBS_NAMESPACE) and method in ("PUT", "DELETE"):
            raise _read_only()
        if method == "PUT":
            return await self.put(request, name)
        if method == "DELETE":
            await self.store.delete_stream(name)
            return Response(status_code=204)
        raise MethodNotAllowed(
            f"{method} is not allowed on a stream", headers={"Allow": ALLOWED_METHODS}
        )

    async def _body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_append:
            raise PayloadTooLarge(f"body larger than {self.max_append} bytes")
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_append:
                raise PayloadTooLarge(f"body larger than {self.max_append} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    # -- writes -------------------------------------------------------------------------------

    async def put(self, request: Request, name: str) -> Response:
        ttl = _parse_ttl(_header(request, "stream-ttl"))
        expires_at = _parse_expires_at(_header(request, "stream-expires-at"))
        if ttl is not None and expires_at is not None:
            raise BadRequest("send Stream-TTL or Stream-Expires-At, not both")
        closed = _parse_bool_header(_header(request, "stream-closed"), "Stream-Closed")
        raw_type = _header(request, "content-type")
        content_type = raw_type.strip() if raw_type and raw_type.strip() else DEFAULT_CONTENT_TYPE
        fork_from = _header(request, "stream-forked-from")
        fork_offset: int | None = None
        fork_sub = 0
        if fork_from is None and (
            _header(request, "stream-fork-sub-offset") is not None
            or _header(request, "stream-fork-offset") is not None
        ):
            raise BadRequest(
                "Stream-Fork-Offset and Stream-Fork-Sub-Offset need Stream-Forked-From"
            )
        if fork_from is not None:
            fork_from = _stream_name_from_path(fork_from)
            raw_offset = _header(request, "stream-fork-offset")
            if raw_offset is not None:
                fork_offset = _parse_offset_or_400(raw_offset)
            raw_sub = _header(request, "stream-fork-sub-offset")
            if raw_sub is not None:
                if not _INT_RE.fullmatch(raw_sub.strip()):
                    raise BadRequest("Stream-Fork-Sub-Offset must be a non-negative integer")
                fork_sub = int(raw_sub.strip())
        body = await self._body(request)
        units = []
        if body:
            unit = _unit(content_type, body, allow_empty_json=True)
            if unit is not None:
                units.append(unit)
        spec = CreateSpec(
            content_type=content_type,
            ttl=ttl,
            expires_at=expires_at,
            closed=closed,
            units=units,
            fork_from=fork_from,
            fork_offset=fork_offset,
            fork_sub_offset=fork_sub,
            content_type_given=raw_type is not None,
        )
        result = await self.store.create_stream(name, spec)
        info = result.info
        headers = {
            "Content-Type": info.content_type,
            "Stream-Next-Offset": format_offset(info.tail),
        }
        if info.closed:
            headers["Stream-Closed"] = "true"
        if result.created:
            headers["Location"] = str(request.url.replace(query=""))
            return Response(status_code=201, headers=headers)
        return Response(status_code=200, headers=headers)

    async def append(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST``: the hot path, on the raw ASGI messages (no Request or Response objects)."""
        try:
            status, headers = await self._append(scope, receive)
        except _Disconnected:
            return  # nothing to answer; an append whose body did not arrive was not made
        except Exception as exc:
            await self._error(exc, scope)(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _append(
        self, scope: Scope, receive: Receive
    ) -> tuple[int, list[tuple[bytes, bytes]]]:
        name = self._name(scope)
        if name.startswith(JOBS_NAMESPACE):
            raise _read_only()
        headers = _raw_headers(scope)
        close = _parse_bool_header(_text(headers.get(b"stream-closed")), "Stream-Closed")
        producer = _parse_producer(headers)
        stream_seq = _text(headers.get(b"stream-seq"))
        raw_type = _text(headers.get(b"content-type"))
        body = await self._read_body(headers.get(b"content-length"), receive)
        if not body and not close:
            raise BadRequest("an append needs a body", code="empty_append")
        if body and (raw_type is None or not raw_type.strip()):
            raise BadRequest("an append needs a Content-Type", code="missing_content_type")
        unit = None
        if body:
            assert raw_type is not None
            try:
                unit = _unit(raw_type, body, allow_empty_json=False)
            except BadRequest:
                # A body that is wrong for the type it claims: if the stream has another type
                # anyway, the mismatch (409) is the better answer.
                info = await self.store.head(name)
                if media_type(raw_type) != media_type(info.content_type):
                    raise Conflict(
                        f"content type {raw_type!r} does not match the stream's "
                        f"{info.content_type!r}",
                        code="content_type_mismatch",
                    ) from None
                raise
        spec = AppendSpec(
            content_type=raw_type if body else None,
            unit=unit,
            close=close,
            stream_seq=stream_seq,
            producer=producer,
        )
        result = await self.store.append(name, spec)
        if unit is not None and not result.duplicate:
            self._appends.inc()
            self._append_bytes.inc(len(unit[0]))
        answer = [(b"stream-next-offset", format_offset(result.info.tail).encode())]
        if result.info.closed:
            answer.append((b"stream-closed", b"true"))
        if producer is None:
            return 204, answer
        answer.append((b"producer-epoch", str(result.producer_epoch).encode()))
        answer.append((b"producer-seq", str(result.producer_seq).encode()))
        # 200 says "new data stored"; a retry, or a close without data, is a 204.
        if unit is not None and not result.duplicate:
            answer.append((b"content-length", b"0"))
            return 200, answer
        return 204, answer

    async def _read_body(self, declared: bytes | None, receive: Receive) -> bytes:
        if declared is not None and declared.isdigit() and int(declared) > self.max_append:
            raise PayloadTooLarge(f"body larger than {self.max_append} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _Disconnected
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_append:
                raise PayloadTooLarge(f"body larger than {self.max_append} bytes")
            if not message.get("more_body", False):
                if not chunks:
                    return chunk  # the whole body in one message: the usual case
                chunks.append(chunk)
                return b"".join(chunks)
            chunks.append(chunk)

    # -- reads --------------------------------------------------------------------------------

    async def head(self, name: str) -> Response:
        info = await self.store.head(name)
        headers = _meta_headers(info)
        headers["Cache-Control"] = "no-store"
        return Response(status_code=200, headers=headers)

    async def get(self, request: Request, name: str) -> Response | SSEResponse:
        params = request.query_params
        live = params.get("live")
        raw_offset = params.get("offset")
        if live is not None and live not in ("long-poll", "sse"):
            raise BadRequest("live must be 'long-poll' or 'sse'")
        if live == "sse":
            # EventSource reconnects to the URL it was made with (its offset included) and says
            # where it got to in Last-Event-ID: that, when present, is where to resume.
            last_event_id = request.headers.get("last-event-id")
            if last_event_id:
                raw_offset = last_event_id
        if live is not None and raw_offset is None:
            raise BadRequest("live reads need an offset")
        if raw_offset is not None and raw_offset == "":
            raise BadRequest("offset must not be empty", code="invalid_offset")
        if live == "sse":
            return await self.sse(request, name, raw_offset or "-1")
        if raw_offset == "now" and live is None:
            result = await self.store.read(name, NOW, 0)
            return self._now_response(result.info)
        info = await self.store.head(name)
        position = info.tail if raw_offset == "now" else _parse_offset_or_400(raw_offset or "-1")
        if live == "long-poll":
            return await self.long_poll(request, name, info, position)
        result = await self.store.read(name, position, self.settings.streams.max_read_bytes)
        return self._read_response(request, result, position, live=False)

    def _now_response(self, info: StreamInfo) -> Response:
        headers = _meta_headers(info)
        headers["Stream-Up-To-Date"] = "true"
        headers["Cache-Control"] = "no-store"
        body = b"[]" if info.is_json else b""
        return Response(body, status_code=200, headers=headers)

    def _read_response(
        self, request: Request, result: ReadResult, position: int, *, live: bool
    ) -> Response:
        info = result.info
        headers = _meta_headers(info, next_position=result.next)
        if result.up_to_date:
            headers["Stream-Up-To-Date"] = "true"
        # Closing changes what a read at the tail means, so a closed tail gets its own tag.
        closed_mark = ":c" if info.closed and result.up_to_date else ""
        etag = f'"{info.id}:{position}:{result.next}{closed_mark}"'
        headers["ETag"] = etag
        headers["Cache-Control"] = CATCH_UP_CACHE
        if live:
            headers["Stream-Cursor"] = cursor.next_cursor(request.query_params.get("cursor"))
        inm = request.headers.get("if-none-match")
        if inm is not None and etag in [tag.strip() for tag in inm.split(",")]:
            return Response(status_code=304, headers=headers)
        if info.is_json:
            body = b"[" + b",".join(unit.data for unit in result.units) + b"]"
        else:
            body = b"".join(unit.data for unit in result.units)
        return Response(body, status_code=200, headers=headers)

    async def long_poll(
        self, request: Request, name: str, info: StreamInfo, position: int
    ) -> Response:
        if position > info.tail:
            raise BadRequest("offset is beyond the end of the stream", code="invalid_offset")
        if position == info.tail and not info.closed:
            with _counted(self.metrics.readers.labels("long-poll")):
                changed = await self._wait(name, position, self.settings.streams.long_poll_timeout)
            if not changed:
                info = await self.store.head(name)
                headers = _meta_headers(info)
                headers["Stream-Up-To-Date"] = "true"
                headers["Stream-Cursor"] = cursor.next_cursor(request.query_params.get("cursor"))
                headers["Cache-Control"] = "no-store"
                return Response(status_code=204, headers=headers)
        result = await self.store.read(name, position, self.settings.streams.max_read_bytes)
        if not result.units and result.info.closed:
            headers = _meta_headers(result.info, next_position=result.next)
            headers["Stream-Up-To-Date"] = "true"
            headers["Stream-Cursor"] = cursor.next_cursor(request.query_params.get("cursor"))
            return Response(status_code=204, headers=headers)
        return self._read_response(request, result, position, live=True)

    async def _wait(self, name: str, position: int, timeout: float) -> bool:
        """Wait for data past *position*; ends early (as a timeout) when readers are stopped.

        The wait runs in the reader's own task; stopping readers cancels the waiting tasks
        (:meth:`_stop_waiting`), and that cancellation is taken back here.
        """
        if self._stopper().done():
            return False
        task = asyncio.current_task()
        assert task is not None
        self._waiting.add(task)
        try:
            return await self.store.wait(name, position, timeout)
        except asyncio.CancelledError:
            if task in self._cancelled_by_stop:
                self._cancelled_by_stop.discard(task)
                if task.uncancel() == 0:
                    return False  # only the stop cancelled us; the reader ends cleanly
            raise
        except Exception:
            return False  # the caller reads again and meets the error there
        finally:
            self._waiting.discard(task)
            self._cancelled_by_stop.discard(task)

    def _stopper(self) -> asyncio.Future[Any]:
        """One task for all readers that completes when readers are stopped."""
        stopper = self._stop_task
        if stopper is None or stopper.get_loop() is not asyncio.get_running_loop():
            stopper = self._stop_task = asyncio.ensure_future(self.lifecycle.stop_readers.wait())
            stopper.add_done_callback(self._stop_waiting)
        return stopper

    def _stop_waiting(self, _: object) -> None:
        for task in list(self._waiting):
            self._cancelled_by_stop.add(task)
            task.cancel()

    async def sse(self, request: Request, name: str, raw_offset: str) -> SSEResponse:
        info = await self.store.head(name)
        position = info.tail if raw_offset == "now" else _parse_offset_or_400(raw_offset)
        if position > info.tail:
            raise BadRequest("offset is beyond the end of the stream", code="invalid_offset")
        binary = not (info.is_json or media_type(info.content_type).startswith("text/"))
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        if binary:
            headers["Stream-SSE-Data-Encoding"] = "base64"
        events = self._sse_events(request, name, position, binary)
        return SSEResponse(events, headers=headers)

    async def _sse_events(
        self, request: Request, name: str, position: int, binary: bool
    ) -> AsyncIterator[bytes]:
        with _counted(self.metrics.readers.labels("sse")):
            async for chunk in self._sse_loop(request, name, position, binary):
                yield chunk

    def _sse_data(
        self, name: str, info: StreamInfo, result: ReadResult, position: int, binary: bool
    ) -> bytes:
        """The data event for *result*, encoded once for every reader at the same position."""
        key = (info.id, position, result.next, binary)
        cached = self._sse_encoded.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        data = _encode_sse_data(info, result, binary)
        if len(self._sse_encoded) >= SSE_ENCODED_STREAMS and name not in self._sse_encoded:
            self._sse_encoded.clear()
        self._sse_encoded[name] = (key, data)
        return data

    async def _sse_loop(
        self, request: Request, name: str, position: int, binary: bool
    ) -> AsyncIterator[bytes]:
        settings = self.settings
        deadline = time.monotonic() + settings.streams.sse_max_duration
        client_cursor = request.query_params.get("cursor")
        first = True
        while True:
            try:
                result = await self.store.read(name, position, settings.streams.max_read_bytes)
            except NotFound:
                return
            except RequestError:
                return
            except StoreError:
                # The store is unreachable (a Redis outage): end the stream cleanly; the
                # client reconnects from its last offset.
                return
            info = result.info
            data = b""
            if result.units:
                data = self._sse_data(name, info, result, position, binary)
                position = result.next
            if result.units or first:
                client_cursor = cursor.next_cursor(client_cursor)
                # One write for the pair: a client never sees data without its control event.
                yield data + _sse_control(info, position, client_cursor)
                first = False
            if position >= info.tail:
                if info.closed:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                keepalive = settings.sse.keepalive
                changed = await self._wait(name, position, min(remaining, keepalive))
                if self.lifecycle.stop_readers.is_set():
                    return
                if not changed:
                    if time.monotonic() >= deadline:
                        return
                    yield b": ping\n"


class _Disconnected(Exception):
    """The client went away before its request body arrived."""


def _read_only() -> MethodNotAllowed:
    # A job's stream is its record: only outlast writes it (retention removes it).
    return MethodNotAllowed(
        "job streams are read-only; they are written by their job",
        code="read_only_stream",
        headers={"Allow": "GET, HEAD, OPTIONS"},
    )


def _sse_control(info: StreamInfo, position: int, client_cursor: str) -> bytes:
    """The control event after the data up to *position*; its id is the offset to resume from,
    for EventSource's Last-Event-ID.

    Written by hand, as ``json.dumps`` would (offsets and cursors are digits and underscores).
    """
    offset = format_offset(position)
    if position >= info.tail and info.closed:
        # A closed stream has no future to collapse onto: no cursor.
        fields = f'{{"streamNextOffset": "{offset}", "streamClosed": true'
    else:
        fields = f'{{"streamNextOffset": "{offset}", "streamCursor": "{client_cursor}"'
    if position >= info.tail:
        fields += ', "upToDate": true'
    return f"event: control\ndata:{fields}}}\nid:{offset}\n\n".encode()


@contextlib.contextmanager
def _counted(gauge: Gauge) -> Iterator[None]:
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()


def _encode_sse_data(info: StreamInfo, result: ReadResult, binary: bool) -> bytes:
    if info.is_json:
        payload = b"[" + b",".join(unit.data for unit in result.units) + b"]"
        lines = payload.decode().splitlines() or [""]
    elif binary:
        lines = [base64.b64encode(b"".join(unit.data for unit in result.units)).decode()]
    else:
        text = b"".join(unit.data for unit in result.units).decode("utf-8", "replace")
        lines = re.split(r"\r\n|\r|\n", text)
    out = ["event: data"]
    # "data:" + line, except that a line starting with a space needs the optional separator
    # space, or a parser would strip the line's own first space.
    out.extend(f"data: {line}" if line.startswith(" ") else f"data:{line}" for line in lines)
    return ("\n".join(out) + "\n\n").encode()


def _meta_headers(info: StreamInfo, *, next_position: int | None = None) -> dict[str, str]:
    headers = {
        "Content-Type": info.content_type,
        "Stream-Next-Offset": format_offset(info.tail if next_position is None else next_position),
    }
    if info.closed and (next_position is None or next_position >= info.tail):
        headers["Stream-Closed"] = "true"
    if info.expires_at is not None:
        headers["Stream-Expires-At"] = _format_expires_at(info.expires_at)
    elif info.ttl is not None:
        remaining = max(0, round(info.touched_at + info.ttl - time.time()))
        headers["Stream-TTL"] = str(min(info.ttl, remaining) if remaining else info.ttl)
    return headers


def _parse_offset_or_400(raw: str) -> int:
    if raw == "-1":
        return 0
    position = parse_offset(raw)
    if position is None:
        raise BadRequest(f"malformed offset {raw!r}", code="invalid_offset")
    return position


def _stream_name_from_path(raw: str) -> str:
    """``Stream-Forked-From`` names the source by its URL path (``/v1/stream/<name>``)."""
    path = raw.strip()
    if "://" in path:
        path = "/" + path.split("://", 1)[1].split("/", 1)[-1]
    prefix = "/v1/stream/"
    if path.startswith(prefix):
        return path[len(prefix) :]
    raise BadRequest("Stream-Forked-From must be a stream path such as /v1/stream/<name>")

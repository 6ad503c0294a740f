"""``/v1/stream/<name>``: the Durable Streams protocol (create, append, close, delete, HEAD, and
reads in catch-up, long-poll and SSE modes).

The request is parsed and validated here (headers, offsets, JSON bodies); the rules about stream
state live in :mod:`outlast.store.streams_logic`, executed atomically by the store.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from outlast.api import cursor
from outlast.api.body import read_body
from outlast.api.error_response import error_response
from outlast.api.sse_response import PING, SSEResponse
from outlast.api.stream_protocol import (
    body_unit,
    encode_sse_data,
    header,
    latin1,
    meta_headers,
    parse_bool_header,
    parse_expires_at,
    parse_offset_or_400,
    parse_producer,
    parse_ttl,
    raw_headers,
    sse_control,
    stream_name_from_path,
)
from outlast.boundary import check_stream_name, whole_number
from outlast.config import Settings
from outlast.errors import BadRequest, Conflict, MethodNotAllowed
from outlast.follow import Readers
from outlast.lifecycle import Lifecycle
from outlast.metrics import Metrics
from outlast.models import JOB_STREAMS
from outlast.store.base import (
    AppendSpec,
    CreateSpec,
    ReadResult,
    Store,
    StreamInfo,
    format_offset,
    media_type,
)

PREFIX = "/v1/stream/"
ALLOWED_METHODS = "GET, HEAD, PUT, POST, DELETE, OPTIONS"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
NOW = -1  # read position meaning "the tail, whatever it is"
CATCH_UP_CACHE = "public, max-age=60, stale-while-revalidate=300"
# Streams whose last SSE data event is kept for the next reader at the same position.
SSE_ENCODED_STREAMS = 256


class StreamsEndpoint:
    """An ASGI endpoint for every method on ``/v1/stream/{name}``."""

    def __init__(
        self, settings: Settings, store: Store, lifecycle: Lifecycle, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.readers = Readers(store, lifecycle.stop_readers, settings.streams.max_read_bytes)
        self.max_append = settings.limits.append_bytes
        self.max_name = settings.limits.stream_name_length
        self._appends = metrics.stream_appends
        self._append_bytes = metrics.stream_append_bytes
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
            response = error_response(exc, scope)
        await response(scope, receive, send)

    def _name(self, scope: Scope) -> str:
        return check_stream_name(scope["path"][len(PREFIX) :], self.max_name)

    async def _dispatch(self, scope: Scope, receive: Receive) -> Response | SSEResponse:
        request = Request(scope, receive)
        name = self._name(scope)
        method = request.method
        if method == "GET":
            return await self.get(request, name)
        if method == "HEAD":
            return await self.head(name)
        if name.startswith(JOB_STREAMS) and method in ("PUT", "DELETE"):
            raise _read_only()
        if method == "PUT":
            return await self.put(request, name)
        if method == "DELETE":
            await self.store.delete_stream(name)
            return Response(status_code=204)
        raise MethodNotAllowed(
            f"{method} is not allowed on a stream", headers={"Allow": ALLOWED_METHODS}
        )

    # -- writes -------------------------------------------------------------------------------

    async def put(self, request: Request, name: str) -> Response:
        ttl = parse_ttl(header(request, "stream-ttl"))
        expires_at = parse_expires_at(header(request, "stream-expires-at"))
        if ttl is not None and expires_at is not None:
            raise BadRequest("send Stream-TTL or Stream-Expires-At, not both")
        closed = parse_bool_header(header(request, "stream-closed"), "Stream-Closed")
        raw_type = header(request, "content-type")
        content_type = raw_type.strip() if raw_type and raw_type.strip() else DEFAULT_CONTENT_TYPE
        fork_from = header(request, "stream-forked-from")
        fork_offset: int | None = None
        fork_sub = 0
        if fork_from is None and (
            header(request, "stream-fork-sub-offset") is not None
            or header(request, "stream-fork-offset") is not None
        ):
            raise BadRequest(
                "Stream-Fork-Offset and Stream-Fork-Sub-Offset need Stream-Forked-From"
            )
        if fork_from is not None:
            fork_from = stream_name_from_path(fork_from)
            raw_offset = header(request, "stream-fork-offset")
            if raw_offset is not None:
                fork_offset = parse_offset_or_400(raw_offset)
            raw_sub = header(request, "stream-fork-sub-offset")
            if raw_sub is not None:
                sub_offset = whole_number(raw_sub.strip())
                if sub_offset is None:
                    raise BadRequest("Stream-Fork-Sub-Offset must be a non-negative integer")
                fork_sub = sub_offset
        body = await read_body(request.receive, header(request, "content-length"), self.max_append)
        units = []
        if body:
            unit = body_unit(content_type, body, allow_empty_json=True)
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
        except ClientDisconnect:
            return  # nothing to answer; an append whose body did not arrive was not made
        except Exception as exc:
            await error_response(exc, scope)(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _append(
        self, scope: Scope, receive: Receive
    ) -> tuple[int, list[tuple[bytes, bytes]]]:
        name = self._name(scope)
        if name.startswith(JOB_STREAMS):
            raise _read_only()
        headers = raw_headers(scope)
        close = parse_bool_header(latin1(headers.get(b"stream-closed")), "Stream-Closed")
        producer = parse_producer(headers)
        stream_seq = latin1(headers.get(b"stream-seq"))
        raw_type = latin1(headers.get(b"content-type"))
        body = await read_body(receive, headers.get(b"content-length"), self.max_append)
        if not body and not close:
            raise BadRequest("an append needs a body", code="empty_append")
        if body and (raw_type is None or not raw_type.strip()):
            raise BadRequest("an append needs a Content-Type", code="missing_content_type")
        unit = None
        if body:
            assert raw_type is not None
            try:
                unit = body_unit(raw_type, body, allow_empty_json=False)
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

    # -- reads --------------------------------------------------------------------------------

    async def head(self, name: str) -> Response:
        info = await self.store.head(name)
        headers = meta_headers(info)
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
        position = info.tail if raw_offset == "now" else parse_offset_or_400(raw_offset or "-1")
        if live == "long-poll":
            return await self.long_poll(request, name, info, position)
        result = await self.store.read(name, position, self.settings.streams.max_read_bytes)
        return self._read_response(request, result, position, live=False)

    def _now_response(self, info: StreamInfo) -> Response:
        headers = meta_headers(info)
        headers["Stream-Up-To-Date"] = "true"
        headers["Cache-Control"] = "no-store"
        body = b"[]" if info.is_json else b""
        return Response(body, status_code=200, headers=headers)

    def _read_response(
        self, request: Request, result: ReadResult, position: int, *, live: bool
    ) -> Response:
        info = result.info
        headers = meta_headers(info, next_position=result.next)
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
            timeout = self.settings.streams.long_poll_timeout
            with self.metrics.readers.labels("long-poll").track_inprogress():
                changed = await self.readers.wait(name, position, timeout)
            if not changed:
                # Nothing new was sent, so the client resumes where it asked: the tail may have
                # moved since the wait timed out, and naming it would skip that data.
                info = await self.store.head(name)
                headers = meta_headers(info, next_position=position)
                headers["Stream-Up-To-Date"] = "true"
                headers["Stream-Cursor"] = cursor.next_cursor(request.query_params.get("cursor"))
                headers["Cache-Control"] = "no-store"
                return Response(status_code=204, headers=headers)
        result = await self.store.read(name, position, self.settings.streams.max_read_bytes)
        if not result.units and result.info.closed:
            headers = meta_headers(result.info, next_position=result.next)
            headers["Stream-Up-To-Date"] = "true"
            headers["Stream-Cursor"] = cursor.next_cursor(request.query_params.get("cursor"))
            return Response(status_code=204, headers=headers)
        return self._read_response(request, result, position, live=True)

    async def sse(self, request: Request, name: str, raw_offset: str) -> SSEResponse:
        info = await self.store.head(name)
        position = info.tail if raw_offset == "now" else parse_offset_or_400(raw_offset)
        if position > info.tail:
            raise BadRequest("offset is beyond the end of the stream", code="invalid_offset")
        binary = not (info.is_json or media_type(info.content_type).startswith("text/"))
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        if binary:
            headers["Stream-SSE-Data-Encoding"] = "base64"
        events = self._sse_events(request, name, position, binary)
        return SSEResponse(events, headers=headers)

    def _sse_data(
        self, name: str, info: StreamInfo, result: ReadResult, position: int, binary: bool
    ) -> bytes:
        """The data event for *result*, encoded once for every reader at the same position."""
        key = (info.id, position, result.next, binary)
        cached = self._sse_encoded.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        data = encode_sse_data(info, result, binary)
        if len(self._sse_encoded) >= SSE_ENCODED_STREAMS and name not in self._sse_encoded:
            self._sse_encoded.clear()
        self._sse_encoded[name] = (key, data)
        return data

    async def _sse_events(
        self, request: Request, name: str, position: int, binary: bool
    ) -> AsyncIterator[bytes]:
        settings = self.settings
        deadline = time.monotonic() + settings.streams.sse_max_duration
        follow = self.readers.follow(name, position, settings.sse.keepalive, deadline=deadline)
        client_cursor = request.query_params.get("cursor")
        first = True
        with self.metrics.readers.labels("sse").track_inprogress():
            async for result in follow:
                if result is None:
                    yield PING
                elif result.units or first:
                    info = result.info
                    data = (
                        self._sse_data(name, info, result, position, binary)
                        if result.units
                        else b""
                    )
                    position = result.next
                    client_cursor = cursor.next_cursor(client_cursor)
                    # One write for the pair: a client never sees data without its control event.
                    yield data + sse_control(info, position, client_cursor)
                    first = False


def _read_only() -> MethodNotAllowed:
    # A job's stream is its record: only outlast writes it (retention removes it).
    return MethodNotAllowed(
        "job streams are read-only; they are written by their job",
        code="read_only_stream",
        headers={"Allow": "GET, HEAD, OPTIONS"},
    )

"""The Durable Streams protocol's wire format, as pure functions: request headers and bodies
parsed and checked (``400`` with the protocol's semantics), and the response headers and SSE
events written. :mod:`outlast.api.streams` does the I/O around them.
"""

from __future__ import annotations

import base64
import json
import re
import time
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.types import Scope

from outlast.boundary import check_stream_name, parse_json, whole_number
from outlast.errors import BadRequest
from outlast.store.base import (
    Producer,
    ReadResult,
    StreamInfo,
    format_offset,
    is_json_type,
    parse_offset,
)

_RFC3339_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
MAX_SAFE_INTEGER = 2**53 - 1
_JSON_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_JSON_SEPARATORS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def header(request: Request, name: str) -> str | None:
    return request.headers.get(name)


def parse_ttl(raw: str | None) -> int | None:
    if raw is None:
        return None
    ttl = whole_number(raw)
    if ttl is None:
        raise BadRequest(
            "Stream-TTL must be a non-negative integer (ASCII digits, no sign or leading zeros)"
        )
    return ttl


def parse_expires_at(raw: str | None) -> float | None:
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


def format_expires_at(value: float) -> str:
    return datetime.fromtimestamp(value, UTC).isoformat().replace("+00:00", "Z")


def parse_bool_header(raw: str | None, name: str) -> bool:
    if raw is None:
        return False
    value = raw.strip().lower()
    if value == "true":
        return True
    if value == "false":
        return False
    raise BadRequest(f"{name} must be 'true' or 'false'")


def raw_headers(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers by (lower-case) name; the first of repeated headers wins, as with
    Starlette's ``Headers.get``."""
    return dict(reversed(scope["headers"]))


def latin1(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("latin-1")


def parse_producer(headers: dict[bytes, bytes]) -> Producer | None:
    pid = latin1(headers.get(b"producer-id"))
    epoch = latin1(headers.get(b"producer-epoch"))
    seq = latin1(headers.get(b"producer-seq"))
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
        value = whole_number(raw.strip())
        if value is None or value > MAX_SAFE_INTEGER:
            raise BadRequest(f"{name} must be an integer from 0 to 2^53-1")
        values.append(value)
    return Producer(pid, values[0], values[1])


def json_messages(body: bytes, *, allow_empty: bool) -> list[bytes]:
    """The messages a JSON body holds: one level of a top-level array is flattened.

    A single value is stored as it was sent (it is valid JSON: it just parsed); elements of an
    array are re-serialised compactly, as they need cutting apart anyway.
    """
    value = parse_json(body)
    if not isinstance(value, list):
        return [body.strip()]
    if not value and not allow_empty:
        raise BadRequest("an empty JSON array appends nothing", code="empty_append")
    return [json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode() for item in value]


def body_unit(
    content_type: str, body: bytes, *, allow_empty_json: bool
) -> tuple[bytes, int] | None:
    if is_json_type(content_type):
        messages = json_messages(body, allow_empty=allow_empty_json)
        if not messages:
            return None
        return b",".join(messages), len(messages)
    return (body, 1) if body else None


def sse_control(info: StreamInfo, position: int, client_cursor: str) -> bytes:
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


def encode_sse_data(info: StreamInfo, result: ReadResult, binary: bool) -> bytes:
    if info.is_json:
        payload = b"[" + b",".join(unit.data for unit in result.units) + b"]"
        # Split at line breaks only (CR, LF: they can only be whitespace between JSON tokens),
        # and escape the separators some clients also split lines at (U+2028, U+2029, U+0085:
        # in JSON they can only be inside strings, where the escape means the same).
        lines = _JSON_LINE_BREAK.split(payload.decode().translate(_JSON_SEPARATORS))
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


def meta_headers(info: StreamInfo, *, next_position: int | None = None) -> dict[str, str]:
    headers = {
        "Content-Type": info.content_type,
        "Stream-Next-Offset": format_offset(info.tail if next_position is None else next_position),
    }
    if info.closed and (next_position is None or next_position >= info.tail):
        headers["Stream-Closed"] = "true"
    if info.expires_at is not None:
        headers["Stream-Expires-At"] = format_expires_at(info.expires_at)
    elif info.ttl is not None:
        remaining = max(0, round(info.touched_at + info.ttl - time.time()))
        headers["Stream-TTL"] = str(min(info.ttl, remaining) if remaining else info.ttl)
    return headers


def parse_offset_or_400(raw: str) -> int:
    if raw == "-1":
        return 0
    position = parse_offset(raw)
    if position is None:
        raise BadRequest(f"malformed offset {raw!r}", code="invalid_offset")
    return position


def stream_name_from_path(raw: str) -> str:
    """``Stream-Forked-From`` names the source by its URL path (``/v1/stream/<name>``)."""
    path = raw.strip()
    if "://" in path:
        path = "/" + path.split("://", 1)[1].split("/", 1)[-1]
    prefix = "/v1/stream/"
    if path.startswith(prefix):
        return check_stream_name(path[len(prefix) :], len(path))
    raise BadRequest("Stream-Forked-From must be a stream path such as /v1/stream/<name>")

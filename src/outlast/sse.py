"""A sans-IO decoder for ``text/event-stream``: bytes in, events out, following the WHATWG rules.

The rules (HTML Living Standard, "Server-sent events", "Interpreting an event stream"):

- the stream is UTF-8; one leading byte-order mark is skipped, later ones are data;
- lines end with CRLF, LF or CR, and a CR at the end of one chunk may pair with an LF at the
  start of the next (so the pair is one line break, never two);
- ``field: value`` loses exactly one space after the colon; a line starting with ``:`` is a
  comment; a line without a colon is a field with an empty value;
- ``data`` lines are joined with LF; ``event`` sets the type (``message`` when unset);
- ``id`` sets the last event id unless its value holds a NUL, and the id persists across events;
- ``retry`` counts only when its value is ASCII digits;
- a blank line dispatches the event, unless no ``data`` was seen (then the block is dropped, but
  its ``id`` still counts);
- an event not ended by a blank line when the stream ends is dropped.

Lines are split on bytes, before decoding: CR and LF never occur inside a UTF-8 sequence, so a
character split across chunks is simply part of an unfinished line, and each finished line is
decoded whole (invalid bytes become U+FFFD, as a browser's decoder would make them).

Limits make a hostile or broken upstream fail loudly instead of growing memory: a line longer
than ``max_line_bytes`` or an event whose data exceeds ``max_event_bytes`` raises
:class:`SSELimitError`. Lines nobody will read (comments, unknown fields) are skipped as they
arrive instead, whatever their length, so a long comment costs nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from outlast.errors import OutlastError

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_DIGITS = re.compile(r"[0-9]+")
_BOM = b"\xef\xbb\xbf"
_FIELDS = frozenset({"data", "event", "id", "retry"})
# The longest field name: a line without a colon that is longer cannot name a field.
_LONGEST_FIELD = max(len(name) for name in _FIELDS)
# A retry longer than this (milliseconds: over 30,000 years) is ignored rather than parsed.
_MAX_RETRY_DIGITS = 15


class SSELimitError(OutlastError):
    """A line or an event of the stream is larger than the configured limit."""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event. ``id`` is the last event id when it was dispatched (``None`` if the
    stream never set one), as ``MessageEvent.lastEventId`` would show it."""

    data: str
    event: str = "message"
    id: str | None = None


class SSEDecoder:
    """Feed it the body's bytes as they arrive; it returns the events each chunk completed.

    ``last_event_id`` is what an ``EventSource`` would send as ``Last-Event-ID`` on reconnect:
    the id in force at the last blank line (a block without data still sets it). ``retry`` is
    the last valid reconnection time the stream asked for, in milliseconds.
    """

    def __init__(self, *, max_line_bytes: int = 1 << 20, max_event_bytes: int = 8 << 20) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_event_bytes = max_event_bytes
        self.retry: int | None = None
        self.last_event_id: str | None = None
        self._id_buffer: str | None = None  # the "last event ID buffer" of the standard
        self._head = b""  # the first bytes, until it is known whether they hold a BOM
        self._started = False
        self._after_cr = False  # the last chunk ended with CR: a leading LF belongs to it
        self._line = bytearray()  # an unfinished line
        self._skipping = False  # the unfinished line is a comment or unknown field: drop it
        self._data: list[str] = []
        self._data_size = 0
        self._event = ""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Decode *chunk* and return the events it completed (often none)."""
        if not self._started:
            chunk = self._head + chunk
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._head = chunk  # maybe a BOM split across chunks: wait for more
                return []
            self._head = b""
            self._started = True
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
        if not chunk:
            return []
        start = 0
        if self._after_cr:
            self._after_cr = False
            if chunk[:1] == b"\n":
                start = 1
        events: list[SSEEvent] = []
        for match in _LINE_BREAK.finditer(chunk, start):
            self._extend(chunk, start, match.start())
            if match.end() == len(chunk) and match.group() == b"\r":
                self._after_cr = True
            event = self._end_line()
            if event is not None:
                events.append(event)
            start = match.end()
        if start < len(chunk):
            self._extend(chunk, start, len(chunk))
        return events

    def close(self) -> list[SSEEvent]:
        """The stream ended. Whatever was unfinished is dropped, as the standard says (an event
        needs its blank line), so this returns no events; it resets the decoder for reuse."""
        self._line.clear()
        self._skipping = False
        self._data, self._data_size, self._event = [], 0, ""
        return []

    # -- lines ----------------------------------------------------------------------------

    def _extend(self, chunk: bytes, start: int, end: int) -> None:
        if self._skipping or start == end:
            return
        self._line += chunk[start:end]
        if len(self._line) > self.max_line_bytes:
            if not self._ignorable(bytes(self._line)):
                raise SSELimitError(f"a line is longer than {self.max_line_bytes} bytes")
            self._line.clear()
            self._skipping = True

    @staticmethod
    def _ignorable(head: bytes) -> bool:
        """Whether a line starting with *head* is certainly a comment or an unknown field."""
        if head.startswith(b":"):
            return True
        name, colon, _ = head.partition(b":")
        if colon:
            return name.decode("utf-8", "replace") not in _FIELDS
        return len(head) > _LONGEST_FIELD

    def _end_line(self) -> SSEEvent | None:
        if self._skipping:
            self._skipping = False
            return None
        if not self._line:
            return self._dispatch()
        line = self._line.decode("utf-8", "replace")
        self._line.clear()
        if line[0] == ":":
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data_size += len(value.encode("utf-8", "surrogatepass")) + 1
            if self._data_size > self.max_event_bytes:
                raise SSELimitError(f"an event is larger than {self.max_event_bytes} bytes")
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id_buffer = value
        elif name == "retry" and len(value) <= _MAX_RETRY_DIGITS and _DIGITS.fullmatch(value):
            self.retry = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        self.last_event_id = self._id_buffer
        data, event = self._data, self._event
        self._data, self._data_size, self._event = [], 0, ""
        if not data:
            return None
        return SSEEvent(data="\n".join(data), event=event or "message", id=self._id_buffer)

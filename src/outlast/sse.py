"""A sans-IO decoder for ``text/event-stream``: bytes in, events out, following the WHATWG rules.

The rules (HTML Living Standard, "Server-sent events", §9.2.6 "Interpreting an event stream"):

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

Limits make a hostile or broken upstream fail loudly instead of growing memory: a line longer
than ``max_line_bytes`` or an event whose data exceeds ``max_event_bytes`` raises
:class:`SSELimitError`.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

from outlast.errors import OutlastError

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_DIGITS = re.compile(r"[0-9]+")
_BOM = "\ufeff"
# A UTF-8 character is at most 4 bytes: a line shorter than a quarter of the limit, in characters,
# cannot be over it, so the exact byte count is only computed for long lines.
_MAX_CHAR_BYTES = 4


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
    def __init__(self, *, max_line_bytes: int = 1 << 20, max_event_bytes: int = 8 << 20) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_event_bytes = max_event_bytes
        self.retry: int | None = None  # the last valid ``retry`` value, in milliseconds
        self.last_id: str | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False  # past the place where a BOM may be
        self._after_cr = False  # the last chunk ended with CR: a leading LF belongs to it
        self._partial = ""  # an unfinished line
        self._data: list[str] = []
        self._data_size = 0
        self._event = ""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Decode *chunk* and return the events it completed (often none)."""
        return self._feed_text(self._decoder.decode(chunk))

    def close(self) -> list[SSEEvent]:
        """The stream ended: flush the decoder. An event without its blank line is dropped."""
        events = self._feed_text(self._decoder.decode(b"", final=True))
        self._partial = ""
        self._data, self._data_size, self._event = [], 0, ""
        return events

    def _feed_text(self, text: str) -> list[SSEEvent]:
        if not text:
            return []
        if not self._started:
            text = self._partial + text
            self._partial = ""
            if len(text) < len(_BOM) and _BOM.startswith(text):
                self._partial = text
                return []
            self._started = True
            if text.startswith(_BOM):
                text = text[len(_BOM) :]
        if self._after_cr:
            self._after_cr = False
            if text.startswith("\n"):
                text = text[1:]
        events: list[SSEEvent] = []
        start = 0
        for match in _LINE_BREAK.finditer(text):
            if match.group() == "\r" and match.end() == len(text):
                self._after_cr = True
            line = text[start : match.start()]
            if self._partial:
                line, self._partial = self._partial + line, ""
            self._check_line(line)
            event = self._line(line)
            if event is not None:
                events.append(event)
            start = match.end()
        if start < len(text):
            self._partial += text[start:]
            self._check_line(self._partial)
        return events

    def _check_line(self, line: str) -> None:
        if len(line) * _MAX_CHAR_BYTES <= self.max_line_bytes:
            return
        if len(line.encode("utf-8", "surrogatepass")) > self.max_line_bytes:
            raise SSELimitError(f"a line is longer than {self.max_line_bytes} bytes")

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
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
        elif name == "id" and "\0" not in value:
            self.last_id = value
        elif name == "retry" and _DIGITS.fullmatch(value):
            self.retry = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        data, event = self._data, self._event
        self._data, self._data_size, self._event = [], 0, ""
        if not data:
            return None
        return SSEEvent(data="\n".join(data), event=event or "message", id=self.last_id)

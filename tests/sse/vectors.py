"""Test vectors for the SSE decoder, kept as data, each naming where it comes from.

- ``WPT``: web-platform-tests, folder ``eventsource/`` (https://github.com/web-platform-tests/wpt),
  the ``format-*`` tests. Their server, ``resources/message.py``, answers the ``message``
  parameter followed by ``"\\n\\n"`` (nothing with ``newline=none``) and then one more ``"\\n"``;
  the bodies below are those answers. ``last-event-id.py`` and ``last-event-id2.py`` bodies are
  copied as they are.
- ``ESP``: the ``eventsource-parser`` npm package's tests, ``test/fixtures.ts`` and
  ``test/parse.test.ts`` (https://github.com/rexxars/eventsource-parser). Its fixtures feed
  JavaScript strings; here they are their UTF-8 bytes. ``formatEvent`` writes ``event:``, then
  ``retry:``, then ``id:``, then ``data:`` lines and a blank line.

An expected event is ``(type, data, last event id)``; ``None`` for an id the stream never set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WPT = "web-platform-tests eventsource/"
ESP = "eventsource-parser test/"

Expected = tuple[str, str, str | None]


@dataclass(frozen=True)
class Vector:
    name: str
    source: str
    chunks: tuple[bytes, ...]  # as the source feeds them; every other chunking is tried too
    events: tuple[Expected, ...]
    retry: int | None = None  # the reconnection time in force at the end
    last_event_id: str | None = None  # what a reconnect would send
    notes: str = field(default="", compare=False)

    @property
    def raw(self) -> bytes:
        return b"".join(self.chunks)


def msg(data: str, event: str = "message", id: str | None = None) -> Expected:
    return (event, data, id)


def _wpt_message(message: str, newline: bool = True) -> tuple[bytes, ...]:
    """The body WPT's ``resources/message.py`` sends for ``?message=`` (already decoded)."""
    return ((message + ("\n\n" if newline else "") + "\n").encode(),)


DONE = msg("✔", "done")
_DONE_EVENT = b"event: done\ndata: \xe2\x9c\x94\n\n"

# test/multibyte.ts: MULTIBYTE_LINES, and a few entries of MULTIBYTE_EMOJIS (ZWJ sequences).
MULTIBYTE_LINES = [
    "Blåbærsyltetøy må da være mulig å oppdrive?",
    "በእርግጥ አንድ ሰው ብሉቤሪ ጃምን መግዛት መቻል አለበት?",
    "بالتأكيد يجب أن يكون المرء قادرا على شراء مربى التوت؟",
    "一定能买到蓝莓果酱吗？",
    "ચોક્કસ એક બ્લુબેરી જામ મેળવવા માટે સમર્થ હોવા જ જોઈએ?",
    "בטח אפשר להשיג ריבת אוכמניות?",
    "निश्चित रूप से किसी को ब्लूबेरी जैम खरीदने में सक्षम होना चाहिए?",
    "Bê guman pêdivî ye ku meriv karibe jama şînê peyda bike?",
    "ប្រាកដណាស់ មនុស្សម្នាក់ត្រូវតែអាចទិញយៈសាពូនមី blueberry បានទេ?",
    "ಖಂಡಿತವಾಗಿಯೂ ಒಬ್ಬರು ಬ್ಲೂಬೆರ್ರಿ ಜಾಮ್ ಅನ್ನು ಸಂಗ್ರಹಿಸಲು ಶಕ್ತರಾಗಿರಬೇಕು?",
    "確かにブルーベリージャムを調達できなければなりませんか？",
    "Невже треба вміти добути варення з чорниці?",
    "แน่นอนว่าจะต้องสามารถจัดหาแยมบลูเบอร์รี่ได้?",
    "Сигурно некој мора да може да набави џем од боровинки?",
]
MULTIBYTE_EMOJIS = [
    "😶\u200d🌫️",
    "😮\u200d💨",
    "❤️\u200d🔥",
    "🫱🏻\u200d🫲🏼",
    "🧔🏽\u200d♂️",
    "👩🏿\u200d🚀",
    "🧑🏻\u200d🤝\u200d🧑🏿",
    "👨\u200d👩\u200d👧\u200d👦",
    "🏳️\u200d🌈",
    "🏴\u200d☠️",
]


def _multibyte() -> Vector:
    """``getMultibyteFixtureStream``: even lines split over two ``data:`` lines (chunks)."""
    chunks: list[bytes] = []
    events: list[Expected] = []
    per_line = -(-len(MULTIBYTE_EMOJIS) // len(MULTIBYTE_LINES))
    for i, text in enumerate(MULTIBYTE_LINES):
        line = text + " " + " ".join(MULTIBYTE_EMOJIS[per_line * i : per_line * (i + 1)])
        chunks.append(f"id: {i}\n".encode())
        if i % 2 == 0:
            chunks.append(f"data:{line[:5]}\n".encode())
            chunks.append(f"data:{line[5:]}\n\n".encode())
            events.append(msg(line[:5] + "\n" + line[5:], id=str(i)))
        else:
            chunks.append(f"data:{line}\n\n".encode())
            events.append(msg(line, id=str(i)))
    chunks.append(_DONE_EVENT)
    events.append(msg("✔", "done", str(len(MULTIBYTE_LINES) - 1)))
    return Vector(
        "multibyte",
        ESP + "fixtures.ts getMultibyteFixtureStream",
        tuple(chunks),
        tuple(events),
        last_event_id=str(len(MULTIBYTE_LINES) - 1),
    )


_LONG = "x" * 2048  # WPT: (new Array(2*1024+1)).join("x")
_LONGER = "x" * (2 * 1024 + 1)  # eventsource-parser: 'x'.repeat(2 * 1024 + 1)

VECTORS: list[Vector] = [
    # -- web-platform-tests -----------------------------------------------------------------
    Vector(
        "wpt-bom",
        WPT + "format-bom.js",
        (b"\xef\xbb\xbfdata:1\n\n\xef\xbb\xbfdata:2\n\ndata:3\n\n\n",),
        (msg("1"), msg("3")),
        notes="only the first BOM is skipped; a later one makes the field name unknown",
    ),
    Vector(
        "wpt-bom-2",
        WPT + "format-bom-2.any.js",
        (b"\xef\xbb\xbf\xef\xbb\xbfdata:1\n\ndata:2\n\ndata:3\n\n\n",),
        (msg("2"), msg("3")),
    ),
    Vector(
        "wpt-comments",
        WPT + "format-comments.js",
        _wpt_message(
            "data:1\r:\0\n:\r\ndata:2\n:"
            + _LONG
            + "\rdata:3\n:data:fail\r:"
            + _LONG
            + "\ndata:4\n",
            newline=False,
        ),
        (msg("1\n2\n3\n4"),),
    ),
    Vector(
        "wpt-data-before-final-empty-line",
        WPT + "format-data-before-final-empty-line.js",
        _wpt_message("retry:1000\ndata:test1\n\nid:test\ndata:test2", newline=False),
        (msg("test1"),),
        retry=1000,
        last_event_id=None,
        notes="the unfinished last event is dropped, and its id never took effect",
    ),
    Vector(
        "wpt-field-data",
        WPT + "format-field-data.js",
        _wpt_message("data:\n\ndata\ndata\n\ndata:test"),
        (msg(""), msg("\n"), msg("test")),
    ),
    Vector(
        "wpt-field-event",
        WPT + "format-field-event.htm",
        _wpt_message("event:test\ndata:x\n\ndata:x"),
        (msg("x", "test"), msg("x")),
    ),
    Vector(
        "wpt-field-event-empty",
        WPT + "format-field-event-empty.htm",
        _wpt_message("event: \ndata:data"),
        (msg("data"),),
    ),
    Vector(
        "wpt-field-id",
        WPT + "format-field-id.htm (resources/last-event-id.py)",
        ("id: …\nretry: 200\ndata: hello\n\n".encode(),),
        (msg("hello", id="…"),),
        retry=200,
        last_event_id="…",
    ),
    Vector(
        "wpt-field-id-null",
        WPT + "format-field-id-null.htm (last-event-id.py?idvalue=%00%00)",
        (b"id: \0\0\nretry: 200\ndata: hello\n\n",),
        (msg("hello"),),
        retry=200,
        notes="an id holding NUL is ignored: lastEventId stays empty",
    ),
    Vector(
        "wpt-field-id-persists",
        WPT + "format-field-id-3.htm (last-event-id2.py type=1)",
        (b"id: 1\ndata: 1\n\ndata:2\n\n",),
        (msg("1", id="1"), msg("2", id="1")),
        last_event_id="1",
    ),
    Vector(
        "wpt-field-id-changes",
        WPT + "format-field-id-3.htm (last-event-id2.py type=2)",
        (b"id: 1\ndata: 1\n\nid: 2\ndata:2\n\ndata:3\n\n",),
        (msg("1", id="1"), msg("2", id="2"), msg("3", id="2")),
        last_event_id="2",
    ),
    Vector(
        "wpt-field-id-resets",
        WPT + "format-field-id-3.htm (last-event-id2.py type=3)",
        (b"id: 1\ndata: 1\n\nid:\ndata:2\n\ndata:3\n\n",),
        (msg("1", id="1"), msg("2", id=""), msg("3", id="")),
        last_event_id="",
    ),
    Vector(
        "wpt-field-parsing",
        WPT + 'format-* "EventSource: field parsing"',
        _wpt_message(
            "data:\0\ndata:  2\rData:1\ndata\0:2\ndata:1\r\0data:4\nda-ta:3\rdata_5\n"
            "data:3\rdata:\r\n data:32\ndata:4\n",
            newline=False,
        ),
        (msg("\0\n 2\n1\n3\n\n4"),),
    ),
    Vector(
        "wpt-field-retry",
        WPT + "format-field-retry.htm",
        _wpt_message("retry:02000\ndata:x"),
        (msg("x"),),
        retry=2000,
        notes="02000 is decimal 2000, not octal",
    ),
    Vector(
        "wpt-field-retry-bogus",
        WPT + "format-field-retry-bogus.htm",
        _wpt_message("retry:2000\nretry:1000x\ndata:x"),
        (msg("x"),),
        retry=2000,
    ),
    Vector(
        "wpt-field-unknown",
        WPT + 'format-* "EventSource: unknown fields and parsing fun"',
        _wpt_message(
            "data:test\n data\ndata\nfoobar:xxx\njustsometext\n:thisisacommentyay\ndata:test"
        ),
        (msg("test\n\ntest"),),
    ),
    Vector(
        "wpt-leading-space",
        WPT + 'format-* "EventSource: leading space"',
        _wpt_message("data:\ttest\rdata: \ndata:test"),
        (msg("\ttest\n\ntest"),),
    ),
    Vector(
        "wpt-newlines",
        WPT + 'format-* "EventSource: newline fest"',
        _wpt_message("data:test\r\ndata\ndata:test\r\n\r", newline=False),
        (msg("test\n\ntest"),),
        notes="the final CR and the server's LF are one CRLF",
    ),
    Vector(
        "wpt-null-character",
        WPT + "format-null-character.html",
        _wpt_message("data:\0\n\n"),
        (msg("\0"),),
    ),
    Vector(
        "wpt-utf-8",
        WPT + "format-utf-8.any.js",
        _wpt_message("data:ok…"),
        (msg("ok…"),),
        notes="always UTF-8, whatever charset the Content-Type names",
    ),
    # -- eventsource-parser -----------------------------------------------------------------
    Vector(
        "esp-basic",
        ESP + "fixtures.ts getBasicFixtureStream",
        (*(f"data: {i}\n\n".encode() for i in range(5)), _DONE_EVENT),
        (*(msg(str(i)) for i in range(5)), DONE),
    ),
    Vector(
        "esp-identified",
        ESP + "fixtures.ts getIdentifiedFixtureStream(1337)",
        (
            b"event: tick\nretry: 50\nid: 1337\ndata: 1337\n\n",
            b"event: tick\nretry: 50\nid: 1338\ndata: 1338\n\n",
        ),
        (msg("1337", "tick", "1337"), msg("1338", "tick", "1338")),
        retry=50,
        last_event_id="1338",
    ),
    Vector(
        "esp-heartbeats",
        ESP + "fixtures.ts getHeartbeatsFixtureStream",
        (
            *(part for c in "ABCDE" for part in (": ♥\n\n".encode(), f"data: {c}\n\n".encode())),
            _DONE_EVENT,
        ),
        (*(msg(c) for c in "ABCDE"), DONE),
    ),
    Vector(
        "esp-multiline",
        ESP + "fixtures.ts getMultilineFixtureStream",
        (
            b"event: stock\n",
            b"data: YHOO\n",
            b"data: +2\n",
            b"data: 10\n\n",
            b"event: stock\n",
            b"data: GOOG\n",
            b"data: -8\n",
            b"data: 1881\n\n",
            _DONE_EVENT,
        ),
        (msg("YHOO\n+2\n10", "stock"), msg("GOOG\n-8\n1881", "stock"), DONE),
    ),
    _multibyte(),
    Vector(
        "esp-multibyte-empty-lines",
        ESP + "fixtures.ts getMultibyteEmptyLineFixtureStream",
        ("\n\n\n\nid: 1\ndata: 我現在都看實況不玩遊戲\n\n".encode(), _DONE_EVENT),
        (msg("我現在都看實況不玩遊戲", id="1"), msg("✔", "done", "1")),
        last_event_id="1",
    ),
    Vector(
        "esp-bom",
        ESP + "fixtures.ts getBomFixtureStream / getInvalidBomFixtureStream",
        (
            b"\xef\xbb\xbfdata: bomful 1\n\n",
            b"\xef\xbb\xbfdata: bomful 2\n\n",
            b"data: bomless 3\n\n",
            _DONE_EVENT,
        ),
        (msg("bomful 1"), msg("bomless 3"), DONE),
    ),
    Vector(
        "esp-carriage-return",
        ESP + "fixtures.ts getCarriageReturnFixtureStream",
        (b"data: dog\r", b"data: bark\r\r", b"data: cat\r", b"data: meow\r\r", _DONE_EVENT),
        (msg("dog\nbark"), msg("cat\nmeow"), DONE),
    ),
    Vector(
        "esp-line-feed",
        ESP + "fixtures.ts getLineFeedFixtureStream",
        (b"data: cow\n", b"data: moo\n\n", b"data: horse\n", b"data: neigh\n\n", _DONE_EVENT),
        (msg("cow\nmoo"), msg("horse\nneigh"), DONE),
    ),
    Vector(
        "esp-crlf",
        ESP + "fixtures.ts getCarriageReturnLineFeedFixtureStream",
        (
            b"data: sheep\r\n",
            b"data: bleat\r\n\r\n",
            b"data: pig\r\n",
            b"data: oink\r\n\r\n",
            _DONE_EVENT,
        ),
        (msg("sheep\nbleat"), msg("pig\noink"), DONE),
    ),
    Vector(
        "esp-comments",
        ESP + "fixtures.ts getCommentsFixtureStream",
        (
            b": Hello\n\n",
            b":" * 300,
            b"\n",
            b"data: First\n\n",
            ": Первый".encode(),
            ": 第二".encode(),
            b"\n",
            b"data: Second\n\n",
            *(b": Moop \n",) * 10,
            ": ثالث".encode(),
            b"\n",
            b"data: Third\n\n",
            ":നാലാമത്തെ".encode(),
            b"\n",
            b"data: Fourth\n\n",
            f": {' '.join(MULTIBYTE_EMOJIS)} :".encode(),
            b"\n",
            b"data: Fifth\n\n",
            _DONE_EVENT,
        ),
        (msg("First"), msg("Second"), msg("Third"), msg("Fourth"), msg("Fifth"), DONE),
    ),
    Vector(
        "esp-mixed-comments",
        ESP + "fixtures.ts getMixedCommentsFixtureStream",
        (
            b"data:1\r\r:\0\n:\r\ndata:2\n\n:",
            _LONGER.encode(),
            b"\rdata:3\n\n:data:fail\r:",
            _LONGER.encode(),
            b"\ndata:4\n\n",
            b"data:5",
        ),
        (msg("1"), msg("2"), msg("3"), msg("4")),
        notes="data:5 has no blank line after it: not dispatched",
    ),
    Vector(
        "esp-empty-event-field",
        ESP + "fixtures.ts getEmptyEventsFixtureStream",
        (b"event:\ndata: Hello 1\n\n", b"event:\n\n", _DONE_EVENT),
        (msg("Hello 1"), DONE),
    ),
    Vector(
        "esp-empty-retry",
        ESP + "fixtures.ts getEmptyRetryFixtureStream(0, 1, 2)",
        (
            "retry: 500\nid: 1\ndata: 🥌\n\n".encode(),
            "id:2\nretry:\ndata:🧹\n\n".encode(),
            "id: 3\ndata: ✅\n\n".encode(),
        ),
        (msg("🥌", id="1"), msg("🧹", id="2"), msg("✅", id="3")),
        retry=500,
        last_event_id="3",
    ),
    Vector(
        "esp-data-field-parsing",
        ESP + "fixtures.ts getDataFieldParsingFixtureStream",
        (b"data:\n\ndata\ndata\n\ndata:test\n\n", _DONE_EVENT),
        (msg(""), msg("\n"), msg("test"), DONE),
    ),
    Vector(
        "esp-invalid-retry",
        ESP + "fixtures.ts getInvalidRetryFixtureStream",
        (b"retry:1000\nretry:2000x\ndata:x\n\n",),
        (msg("x"),),
        retry=1000,
    ),
    Vector(
        "esp-unknown-fields",
        ESP + "fixtures.ts getUnknownFieldsFixtureStream",
        (
            b"data:abc\n data\ndata\nfoobar:xxx\njustsometext\n:thisisacommentyay\ndata:123\n\n",
            _DONE_EVENT,
        ),
        (msg("abc\n\n123"), DONE),
    ),
    Vector(
        "esp-cr-separating-chunks",
        ESP + "parse.test.ts 'cr separating chunks of same event'",
        (b"data: A\r\n", b"data: B\r", b"\n", b"data: C\r\n", b"\n"),
        (msg("A\nB\nC"),),
        notes="a CR ending a chunk pairs with the next chunk's LF",
    ),
    Vector(
        "esp-incorrect-retry",
        ESP + "parse.test.ts 'stream with incorrect retry fields'",
        (b"\nretry: 500\n\ndata: first\n\nretry: 50x\n\ndata: second\n\n",),
        (msg("first"), msg("second")),
        retry=500,
    ),
    Vector(
        "esp-id-null",
        ESP + "parse.test.ts 'id field containing a NULL character'",
        (b"id: 123\nid: bad\0id\ndata: hello\n\n",),
        (msg("hello", id="123"),),
        last_event_id="123",
    ),
    Vector(
        "esp-id-without-data",
        ESP + "parse.test.ts 'reports an id from a block without data'",
        (b"id: 42\n", b"\n", b"id: bad\0id\n\n"),
        (),
        last_event_id="42",
        notes="a block without data dispatches nothing, its id counts",
    ),
    Vector(
        "esp-id-reset-without-data",
        ESP + "parse.test.ts (the same test, last step)",
        (b"id: 42\n\n", b"id:\n\n"),
        (),
        last_event_id="",
    ),
    Vector(
        "esp-id-cr-block",
        ESP + "parse.test.ts 'reports an id from a block using CR'",
        (b"id: 42\r\r",),
        (),
        last_event_id="42",
    ),
    Vector(
        "esp-id-crlf-block",
        ESP + "parse.test.ts 'reports an id from a block using CRLF'",
        (b"id: 42\r\n\r\n",),
        (),
        last_event_id="42",
    ),
    Vector(
        "esp-id-before-event",
        ESP + "parse.test.ts 'reports an id before dispatching'",
        (b"id: 42\ndata: hello\n\n",),
        (msg("hello", id="42"),),
        last_event_id="42",
    ),
    Vector(
        "esp-discarded-comment-crlf",
        ESP + "parse.test.ts 'discarded unterminated comments'",
        (b"data: one\n:", b"ignored\r\ndata: two\n\n"),
        (msg("one\ntwo"),),
    ),
    Vector(
        "esp-discarded-crlf-split",
        ESP + "parse.test.ts 'crlf split across chunks'",
        (b"data: one\n:", b"ignored\r", b"\ndata: two\n\n"),
        (msg("one\ntwo"),),
    ),
    Vector(
        "esp-discarded-bare-cr",
        ESP + "parse.test.ts 'terminated by a bare cr'",
        (b"data: one\n:", b"ignored\r", b"data: two\n\n"),
        (msg("one\ntwo"),),
    ),
    Vector(
        "esp-discarded-own-cr",
        ESP + "parse.test.ts 'with their own bare cr terminator'",
        (b"data: one\n:ignored\r", b"data: two\n\n"),
        (msg("one\ntwo"),),
    ),
    Vector(
        "esp-bare-field-cr",
        ESP + "parse.test.ts 'bare field lines terminated by a cr'",
        (b"data: one\ndata\r", b"\ndata: two\n\n"),
        (msg("one\n\ntwo"),),
    ),
    Vector(
        "esp-garbage-cr",
        ESP + "parse.test.ts 'unknown field lines completed by a cr'",
        (b"garbage\r", b"data: ok\n\n"),
        (msg("ok"),),
    ),
    Vector(
        "esp-blank-cr-line",
        ESP + "parse.test.ts 'a blank cr line ending a chunk'",
        (b"data: one\r", b"\r", b"\n"),
        (msg("one"),),
        notes="exactly one event",
    ),
    Vector(
        "esp-split-field-name",
        ESP + "parse.test.ts 'preserves split valid fields'",
        (b"da", b"ta\n\n"),
        (msg(""),),
    ),
    Vector(
        "esp-invalid-json-unterminated",
        ESP + "parse.test.ts 'invalid but not newline-terminated'",
        (b'{"error":"Internal Server Error","message":"The server could not process"}',),
        (),
    ),
]

"""The SSE decoder on the web-platform-tests and eventsource-parser vectors (tests/sse/vectors.py),
fed in every way a network may cut them: whole, byte by byte, split at every byte, as the source
fed them. Then limits, and properties (any chunking decodes the same; what our encoder writes
decodes back) checked by hypothesis."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outlast.api.sse_response import sse_event
from outlast.sse import SSEDecoder, SSEEvent, SSELimitError
from tests.sse.vectors import VECTORS, Expected, Vector

Decoded = tuple[list[Expected], int | None, str | None]


def decode(chunks: Iterable[bytes], **limits: int) -> Decoded:
    decoder = SSEDecoder(**limits)
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    events += decoder.close()
    return [(e.event, e.data, e.id) for e in events], decoder.retry, decoder.last_event_id


def chunkings(vector: Vector) -> Iterator[tuple[str, list[bytes]]]:
    """Every way the tests cut a vector: as given, whole, byte by byte, and in two at each byte
    (three pieces around every byte for short vectors, so that CRLF pairs are torn too)."""
    raw = vector.raw
    yield "as given", list(vector.chunks)
    yield "whole", [raw]
    yield "bytes", [raw[i : i + 1] for i in range(len(raw))]
    for i in range(1, len(raw)):
        yield f"split at {i}", [raw[:i], raw[i:]]
    if len(raw) <= 300:
        for i in range(1, len(raw) - 1):
            yield f"byte {i} alone", [raw[:i], raw[i : i + 1], raw[i + 1 :]]


@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
def test_vector_in_every_chunking(vector: Vector) -> None:
    expected = (list(vector.events), vector.retry, vector.last_event_id)
    for how, chunks in chunkings(vector):
        assert decode(chunks) == expected, f"{vector.name} ({vector.source}), {how}"


def test_the_vectors_name_their_source() -> None:
    assert len({v.name for v in VECTORS}) == len(VECTORS)
    for vector in VECTORS:
        assert vector.source.startswith(("web-platform-tests", "eventsource-parser"))


# -- byte-level cases the vectors cover only in passing -----------------------------------------


def test_a_multibyte_character_split_anywhere() -> None:
    text = "é€😀🫱🏻\u200d🫲🏼 ok"
    raw = f"data: {text}\n\n".encode()
    for i in range(1, len(raw)):
        assert decode([raw[:i], raw[i:]])[0] == [("message", text, None)]


def test_invalid_utf8_becomes_replacement_characters() -> None:
    assert decode([b"data: a\xffb\xe2\x82\n\n"])[0] == [("message", "a\ufffdb\ufffd", None)]


def test_a_bom_split_across_chunks_is_skipped() -> None:
    assert decode([b"\xef", b"\xbb", b"\xbfdata: x\n\n"])[0] == [("message", "x", None)]
    assert decode([b"\xef\xbb", b"\xbf", b"\xef\xbb\xbfdata: x\n\ndata: y\n\n"])[0] == [
        ("message", "y", None)
    ]


def test_a_bom_is_only_skipped_at_the_very_start() -> None:
    assert decode([b"\n\xef\xbb\xbfdata: x\n\n"])[0] == []
    assert decode([b"data: \xef\xbb\xbfx\n\n"])[0] == [("message", "\ufeffx", None)]


def test_only_one_space_after_the_colon_is_removed() -> None:
    assert decode([b"data:  two\n\nevent:  t\ndata:x\n\n"])[0] == [
        ("message", " two", None),
        (" t", "x", None),
    ]


def test_a_field_without_colon_has_an_empty_value() -> None:
    assert decode([b"data\nevent\ndata\n\n"])[0] == [("message", "\n", None)]


def test_retry_takes_only_ascii_digits() -> None:
    for bad in ("", "  1", "1 ", "-1", "+1", "1.5", "1e3", "٣", "0x10", "9" * 16):
        assert decode([f"retry:{bad}\ndata:x\n\n".encode()])[1] is None, bad
    assert decode([b"retry: 0\n\n"])[1] == 0
    assert decode([b"retry:123456789012345\n\n"])[1] == 123456789012345


def test_the_end_of_the_stream_drops_what_is_unfinished() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: done\n\ndata: half\ndata: more") == [SSEEvent("done")]
    assert decoder.close() == []
    # The decoder starts afresh after close(): nothing of the dropped event leaks.
    assert decoder.feed(b"\ndata: next\n\n") == [SSEEvent("next")]


def test_an_id_line_in_an_unfinished_block_does_not_count_at_the_end() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"id: 1\ndata: a\n\nid: 2\ndata: b\n")
    decoder.close()
    assert decoder.last_event_id == "1"


def test_huge_event_under_the_default_limits() -> None:
    # eventsource-parser's 'huge data chunks' test: ~10 MB of multibyte data lines in chunks,
    # checked with a SHA-256 of the data. Here 4 MB, fed in 64 KiB pieces.
    line = "data: Blåbærsyltetøy 一定能买到蓝莓果酱吗 😶\u200d🌫️\n"
    body = (line * (4_000_000 // len(line.encode()))).encode()
    raw = b": hello\n\n" + body + b"\n: END-OF-STREAM\n\n"
    data = "\n".join(line[6:-1] for _ in range(body.count(b"\n")))
    events, _, _ = decode(raw[i : i + 65536] for i in range(0, len(raw), 65536))
    assert len(events) == 1
    assert hashlib.sha256(events[0][1].encode()).hexdigest() == (
        hashlib.sha256(data.encode()).hexdigest()
    )


# -- limits ---------------------------------------------------------------------------------------


def test_a_line_over_the_limit_fails_as_soon_as_it_is_over() -> None:
    limit = 64
    decoder = SSEDecoder(max_line_bytes=limit)
    line = b"data: " + b"x" * limit
    for i in range(limit):  # exactly the limit is allowed
        decoder.feed(line[i : i + 1])
    with pytest.raises(SSELimitError, match="line is longer than 64 bytes"):
        decoder.feed(line[limit : limit + 1])


def test_a_line_at_the_limit_is_fine() -> None:
    line = b"data: " + b"x" * 58
    assert len(line) == 64
    assert decode([line + b"\n\n"], max_line_bytes=64)[0] == [("message", "x" * 58, None)]


@pytest.mark.parametrize(
    "line",
    [
        b":" + b"c" * 10_000,
        b": " + "ü".encode() * 5000,
        b"x" * 10_000,
        b"unknown: " + b"v" * 10_000,
    ],
    ids=["comment", "multibyte-comment", "no-colon", "unknown-field"],
)
def test_long_lines_nobody_reads_are_skipped_not_buffered(line: bytes) -> None:
    raw = b"data: a\n" + line + b"\r\ndata: b\n\n"
    for chunks in ([raw], [raw[i : i + 7] for i in range(0, len(raw), 7)]):
        assert decode(chunks, max_line_bytes=100)[0] == [("message", "a\nb", None)]


@pytest.mark.parametrize("field", [b"data", b"event", b"id", b"retry"])
def test_long_lines_of_known_fields_fail(field: bytes) -> None:
    with pytest.raises(SSELimitError):
        decode([field + b":" + b"1" * 200 + b"\n\n"], max_line_bytes=100)


def test_an_event_over_the_limit_fails_even_with_short_lines() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    with pytest.raises(SSELimitError, match="event is larger than 100 bytes"):
        for _ in range(100):
            decoder.feed(b"data: 0123456789\n")


def test_events_under_the_limit_never_add_up() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    events = []
    for _ in range(1000):
        events += decoder.feed(b"data: 0123456789\ndata: 0123456789\n\n")
    assert len(events) == 1000


# -- properties -----------------------------------------------------------------------------------


def _cut(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(raw) + 1) for c in cuts})
    return [raw[a:b] for a, b in zip([0, *points], [*points, len(raw)], strict=True)]


_SSE_ALPHABET = st.sampled_from(
    [
        b"data",
        b"event",
        b"id",
        b"retry",
        b":",
        b" ",
        b"\r",
        b"\n",
        b"\r\n",
        b"x",
        b"1",
        b"\0",
        b"\xef\xbb\xbf",
        "é".encode(),
        "😀".encode(),
        b"\xff",
    ]
)


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(_SSE_ALPHABET, max_size=60), cuts=st.lists(st.integers(0, 10_000)))
def test_any_chunking_decodes_like_the_whole(parts: list[bytes], cuts: list[int]) -> None:
    raw = b"".join(parts)
    assert decode(_cut(raw, cuts)) == decode([raw])


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200), cuts=st.lists(st.integers(0, 10_000)))
def test_any_bytes_any_chunking(raw: bytes, cuts: list[int]) -> None:
    assert decode(_cut(raw, cuts)) == decode([raw])


_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=30)


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            _text,
            st.one_of(st.none(), st.text("abcdef.-_", min_size=1, max_size=8)),
            st.one_of(st.none(), st.text("0123456789abc", max_size=8)),
        ),
        max_size=8,
    ),
    newline=st.sampled_from([b"\n", b"\r", b"\r\n"]),
    bom=st.booleans(),
    cuts=st.lists(st.integers(0, 10_000)),
)
def test_what_our_encoder_writes_decodes_back(
    events: list[tuple[str, str | None, str | None]], newline: bytes, bom: bool, cuts: list[int]
) -> None:
    raw = b"\xef\xbb\xbf" if bom else b""
    expected: list[Expected] = []
    last_id: str | None = None
    for data, event, id in events:
        raw += sse_event(data=data, event=event, id=id).replace(b"\n", newline)
        raw += b": ping" + newline  # a keepalive between events, as outlast sends them
        last_id = id if id is not None else last_id
        plain = data.replace("\r\n", "\n").replace("\r", "\n")
        expected.append((event or "message", plain, last_id))
    assert decode(_cut(raw, cuts))[0] == expected

"""The in-memory cache of recently committed units answers only inside the range it holds."""

from __future__ import annotations

from dataclasses import replace

from outlast.store.base import AppendResult, AppendSpec, ReadResult, StreamInfo, Unit
from outlast.store.recent import MAX_UNITS, RecentUnits


def info(tail: int, *, stream_id: int = 1, ttl: int | None = None) -> StreamInfo:
    return StreamInfo(
        id=stream_id,
        name="s",
        content_type="text/plain",
        tail=tail,
        closed=False,
        created_at=0.0,
        touched_at=0.0,
        ttl=ttl,
    )


def test_serves_units_inside_its_range_only() -> None:
    recent = RecentUnits()
    recent.committed("s", info(3), [Unit(0, 3, 1, b"abc")])
    recent.committed("s", info(5), [Unit(3, 5, 1, b"de")])
    hit = recent.read("s", 3, 1 << 20)
    assert hit is not None and [u.data for u in hit.units] == [b"de"] and hit.next == 5
    assert recent.read("s", 5, 1 << 20) is None  # the tail itself: ask the store
    assert recent.read("s", 1, 1 << 20) is None  # not a unit boundary
    assert recent.read("other", 0, 1 << 20) is None


def test_a_gap_or_a_new_stream_starts_over() -> None:
    recent = RecentUnits()
    recent.committed("s", info(3), [Unit(0, 3, 1, b"abc")])
    recent.committed("s", info(9), [Unit(7, 9, 1, b"xy")])  # 3..7 was written elsewhere
    assert recent.read("s", 0, 1 << 20) is None
    assert recent.read("s", 7, 1 << 20) is not None
    recent.committed("s", info(2, stream_id=2), [Unit(0, 2, 1, b"zz")])  # re-created
    hit = recent.read("s", 0, 1 << 20)
    assert hit is not None and hit.units[0].data == b"zz"


def test_bounded_and_skips_ttl_streams() -> None:
    recent = RecentUnits()
    for i in range(MAX_UNITS + 10):
        recent.committed("s", info(i + 1), [Unit(i, i + 1, 1, b"x")])
    assert recent.read("s", 0, 1 << 20) is None
    assert recent.read("s", 10, 1 << 20) is not None
    recent.committed("t", info(1, ttl=60), [Unit(0, 1, 1, b"x")])
    assert recent.read("t", 0, 1 << 20) is None


def test_bounded_in_streams_and_in_total_the_least_recent_first() -> None:
    recent = RecentUnits(max_streams=3, max_total_bytes=10)
    for name in "abc":
        recent.committed(name, info(2), [Unit(0, 2, 1, b"xx")])
    recent.committed("a", info(4), [Unit(2, 4, 1, b"yy")])  # a is now the most recent
    recent.committed("d", info(2), [Unit(0, 2, 1, b"zz")])  # a fourth stream: b goes
    assert recent.read("b", 0, 1 << 20) is None
    assert all(recent.read(name, 0, 1 << 20) is not None for name in "acd")
    assert recent.total_bytes == 8
    recent.committed("d", info(6), [Unit(2, 6, 1, b"wwww")])  # 12 bytes: c goes, then 10 fit
    assert recent.read("c", 0, 1 << 20) is None
    assert recent.total_bytes == 10
    recent.forget("a")
    recent.committed("d", info(7), [Unit(6, 7, 1, b"v")])
    assert recent.total_bytes == 7
    recent.forget()
    assert recent.total_bytes == 0


def test_one_commit_of_several_units() -> None:
    recent = RecentUnits()
    recent.committed("s", info(2), [Unit(0, 2, 1, b"ab")])
    recent.committed("s", info(7), [Unit(2, 5, 1, b"cde"), Unit(5, 7, 1, b"fg")])
    hit = recent.read("s", 2, 1 << 20)
    assert hit is not None and [u.data for u in hit.units] == [b"cde", b"fg"]
    assert hit.info.tail == 7 and hit.next == 7
    hit = recent.read("s", 0, 3)  # bounded by max_bytes, at least one unit
    assert hit is not None and [u.data for u in hit.units] == [b"ab"]
    # A stream deleted and created again within one commit: only the new stream's units stay.
    recent.committed("s", info(2, stream_id=2), [Unit(7, 9, 1, b"hi"), Unit(0, 2, 1, b"zz")])
    assert recent.read("s", 7, 1 << 20) is None
    hit = recent.read("s", 0, 1 << 20)
    assert hit is not None and [u.data for u in hit.units] == [b"zz"]
    assert recent.total_bytes == 2


def test_an_append_is_recorded_as_asked_and_answered() -> None:
    recent = RecentUnits()
    spec = AppendSpec(content_type="text/plain", unit=(b"abc", 1))
    recent.appended("s", spec, AppendResult(info(3)))
    recent.appended("s", spec, AppendResult(info(3), duplicate=True))  # a retry: nothing new
    assert recent.read("s", 0, 100) == ReadResult(info(3), [Unit(0, 3, 1, b"abc")], 3)
    closed = replace(info(3), closed=True)
    recent.appended("s", AppendSpec(content_type=None, unit=None, close=True), AppendResult(closed))
    assert recent.info("s") == closed
    assert recent.read("s", 0, 100) == ReadResult(closed, [Unit(0, 3, 1, b"abc")], 3)


def test_a_unit_recorded_twice_keeps_what_was_kept() -> None:
    """A backend that records each commit and then the append's answer (Redis) records the same
    unit twice, maybe after later units: the cache keeps every unit instead of starting over."""
    recent = RecentUnits()
    units = [Unit(i * 2, i * 2 + 2, 1, b"ab") for i in range(3)]
    for i, unit in enumerate(units):
        recent.committed("s", info(unit.end), [unit])
        if i:
            recent.committed("s", info(units[i - 1].end), [units[i - 1]])  # late, again
    cached = recent.read("s", 0, 1 << 20)
    assert cached is not None and [u.start for u in cached.units] == [0, 2, 4]
    assert cached.info.tail == 6  # the late record did not take the stream back

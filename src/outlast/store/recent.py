"""Recently committed units per stream, kept in memory so that live readers at the tail are served
without a query each (one append wakes every reader of the stream).

Only what was committed is put here, so "durable before visible" still holds. The cache is
consulted only for a position strictly inside the range it holds; anything else (the tail
itself, older data, another process's appends) goes to the store. Streams with a TTL or an
expiry are not kept (reads renew or end them). Memory is bounded per stream and in total; the
least recently appended streams go first. The bound in streams is well above the number of
streams a node writes at once (a thousand relays): below it, streams that readers have not
caught up with yet would be dropped and every reader sent to the store, under load, when the
store is already the slow part.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from outlast.store.base import AppendResult, AppendSpec, ReadResult, StreamInfo, Unit

MAX_STREAMS = 8192
MAX_UNITS = 64
MAX_BYTES = 256 * 1024  # per stream
MAX_TOTAL_BYTES = 64 * 1024 * 1024


@dataclass
class _Entry:
    info: StreamInfo
    units: deque[Unit] = field(default_factory=deque)
    size: int = 0


class RecentUnits:
    def __init__(
        self, max_streams: int = MAX_STREAMS, max_total_bytes: int = MAX_TOTAL_BYTES
    ) -> None:
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._max_streams = max_streams
        self._max_total = max_total_bytes
        self._total = 0  # bytes of data held, every stream

    def appended(self, name: str, spec: AppendSpec, result: AppendResult) -> None:
        """Record a committed append, as it was asked for and as the store answered."""
        if result.duplicate:
            return  # an idempotent producer's retry: nothing was written
        info = result.info
        if spec.unit is None:  # a close without data
            self.committed(name, info, ())
            return
        data, count = spec.unit
        self.committed(name, info, (Unit(info.tail - len(data), info.tail, count, data),))

    def committed(self, name: str, info: StreamInfo, units: Sequence[Unit]) -> None:
        """Record the units one commit appended, in order, and the stream as that commit left
        it: one call per stream and commit rather than one per unit (a commit of a busy relay
        carries several events, and this runs on the event loop for each of them)."""
        if info.ttl is not None or info.expires_at is not None:
            self.forget(name)
            return
        entry = self._entries.get(name)
        if entry is None or entry.info.id != info.id:
            self.forget(name)
            entry = self._entries[name] = _Entry(info)
        tail = entry.info.tail
        for unit in units:
            if entry.units and entry.units[0].start <= unit.start and unit.end <= tail:
                # Kept already: a backend that records at commit sees the append's own answer
                # too, maybe after later commits. Starting over here would drop every kept unit.
                continue
            if entry.units and unit.start != tail:
                # Not where the kept units end (a gap, or the units of a stream deleted and
                # created again in the same commit): start over from this unit.
                self.forget(name)
                entry = self._entries[name] = _Entry(info)
            entry.units.append(unit)
            entry.size += len(unit.data)
            self._total += len(unit.data)
            tail = unit.end
        while len(entry.units) > MAX_UNITS or (entry.size > MAX_BYTES and len(entry.units) > 1):
            dropped = len(entry.units.popleft().data)
            entry.size -= dropped
            self._total -= dropped
        if info.tail >= entry.info.tail:
            entry.info = info  # never back to an older state, recorded late
        self._entries.move_to_end(name)
        while len(self._entries) > self._max_streams or (
            self._total > self._max_total and len(self._entries) > 1
        ):
            _, oldest = self._entries.popitem(last=False)
            self._total -= oldest.size

    def info(self, name: str) -> StreamInfo | None:
        """The stream's metadata as of the last commit in this process, if it is kept."""
        entry = self._entries.get(name)
        return None if entry is None else entry.info

    def forget(self, name: str | None = None) -> None:
        if name is None:
            self._entries.clear()
            self._total = 0
            return
        entry = self._entries.pop(name, None)
        if entry is not None:
            self._total -= entry.size

    @property
    def total_bytes(self) -> int:
        return self._total

    def read(self, name: str, position: int, max_bytes: int) -> ReadResult | None:
        entry = self._entries.get(name)
        if entry is None or not entry.units:
            return None
        if not entry.units[0].start <= position < entry.info.tail:
            return None
        units: list[Unit] = []
        size = 0
        for unit in entry.units:
            if unit.start < position:
                continue
            if units and size + len(unit.data) > max_bytes:
                break
            units.append(unit)
            size += len(unit.data)
        if not units or units[0].start != position:
            return None  # not an offset the cache can answer for (not a unit boundary)
        return ReadResult(info=entry.info, units=units, next=units[-1].end)

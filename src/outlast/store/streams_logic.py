"""The Durable Streams rules, written once over a small transaction interface (:class:`Tx`).

A backend supplies a :class:`Tx` for one atomic transaction; these functions decide what the
protocol says should happen (create or match, fork, append with Stream-Seq and idempotent
producers, close, soft-delete with forks, sliding TTL) and raise the matching request errors.
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from outlast.errors import BadRequest, Conflict, Forbidden, Gone, NotFound
from outlast.store.base import (
    AppendResult,
    AppendSpec,
    CreateResult,
    CreateSpec,
    ReadResult,
    StreamInfo,
    Unit,
    format_offset,
    media_type,
)

T = TypeVar("T")

# Reads renew a TTL stream at most this often (as a share of its TTL, capped at one second), so
# that a busy reader does not turn every read into a write.
TOUCH_SHARE = 0.1
TOUCH_MAX_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    name: str
    content_type: str
    tail: int
    closed: bool
    created_at: float
    touched_at: float
    ttl: int | None
    expires_at: float | None
    last_seq: str | None
    parent_id: int | None
    fork_key: str | None
    deleted: bool
    closed_by: str | None

    def info(self) -> StreamInfo:
        return StreamInfo(
            id=self.id,
            name=self.name,
            content_type=self.content_type,
            tail=self.tail,
            closed=bool(self.closed),
            created_at=self.created_at,
            touched_at=self.touched_at,
            ttl=self.ttl,
            expires_at=self.expires_at,
            last_seq=self.last_seq,
        )

    def expired(self, now: float) -> bool:
        # StreamInfo.expiry(), without building a StreamInfo (this runs on every append).
        if self.expires_at is not None:
            return self.expires_at <= now
        return self.ttl is not None and self.touched_at + self.ttl <= now


@dataclass(frozen=True, slots=True)
class Changed(Generic[T]):
    """What a rule returns: its result, with the stream names whose readers must wake (and
    the queues, as :func:`outlast.store.jobs_logic.queue_key`, whose workers must)."""

    value: T
    changed_names: tuple[str, ...]


class Tx(abc.ABC):
    @abc.abstractmethod
    def get_stream(self, name: str) -> Row | None: ...
    @abc.abstractmethod
    def get_stream_by_id(self, stream_id: int) -> Row | None: ...
    @abc.abstractmethod
    def insert_stream(self, row: Row) -> int: ...
    @abc.abstractmethod
    def update_stream(self, stream_id: int, **fields: Any) -> None: ...
    @abc.abstractmethod
    def remove_stream(self, stream_id: int) -> None: ...
    @abc.abstractmethod
    def count_children(self, stream_id: int) -> int: ...
    @abc.abstractmethod
    def insert_unit(self, stream_id: int, unit: Unit) -> None: ...
    @abc.abstractmethod
    def copy_units(self, source_id: int, target_id: int, before: int) -> None: ...
    @abc.abstractmethod
    def unit_at(self, stream_id: int, start: int) -> Unit | None: ...
    @abc.abstractmethod
    def units_from(self, stream_id: int, start: int, max_bytes: int) -> list[Unit]: ...
    @abc.abstractmethod
    def get_producer(self, stream_id: int, producer_id: str) -> tuple[int, int] | None: ...
    @abc.abstractmethod
    def put_producer(self, stream_id: int, producer_id: str, epoch: int, seq: int) -> None: ...
    @abc.abstractmethod
    def expired_ids(self, now: float) -> list[int]: ...


# -- lookups ---------------------------------------------------------------------------------


def _live(tx: Tx, name: str, now: float) -> Row | None:
    """The stream called *name* unless it is absent or expired (expired ones are removed)."""
    row = tx.get_stream(name)
    if row is None:
        return None
    if row.expired(now):
        _delete_row(tx, row)
        return None
    return row


def _require(tx: Tx, name: str, now: float) -> Row:
    row = _live(tx, name, now)
    if row is None:
        raise NotFound(f"stream not found: {name}")
    if row.deleted:
        raise Gone(f"stream was deleted: {name}")
    return row


def head(tx: Tx, name: str, now: float) -> StreamInfo:
    row = tx.get_stream(name)
    if row is None or row.expired(now):
        raise NotFound(f"stream not found: {name}")
    if row.deleted:
        raise Gone(f"stream was deleted: {name}")
    return row.info()


def read(tx: Tx, name: str, position: int, max_bytes: int, now: float) -> ReadResult:
    info = head(tx, name, now)
    if position < 0:  # "now": the tail, no data
        return ReadResult(info=info, units=[], next=info.tail)
    if position > info.tail:
        raise BadRequest("offset is beyond the end of the stream", code="invalid_offset")
    units = tx.units_from(info.id, position, max_bytes) if position < info.tail else []
    next_position = units[-1].end if units else position
    return ReadResult(info=info, units=units, next=next_position)


def needs_touch(info: StreamInfo, now: float) -> bool:
    if info.ttl is None or info.expires_at is not None:
        return False
    return now - info.touched_at >= min(TOUCH_MAX_INTERVAL, info.ttl * TOUCH_SHARE)


def touch(tx: Tx, name: str, stream_id: int, now: float) -> Changed[None]:
    """A read renews the stream's TTL, if *name* is still the stream that was read."""
    row = tx.get_stream(name)
    if row is not None and row.id == stream_id:
        tx.update_stream(stream_id, touched_at=now)
    return Changed(None, ())


# -- create and fork -------------------------------------------------------------------------


def _same_config(row: Row, spec: CreateSpec) -> bool:
    if spec.content_type_given and media_type(row.content_type) != media_type(spec.content_type):
        return False
    if row.ttl != spec.ttl or row.expires_at != spec.expires_at:
        return False
    if bool(row.closed) != spec.closed:
        return False
    return row.fork_key == _fork_key(spec)


def _fork_key(spec: CreateSpec) -> str | None:
    if spec.fork_from is None:
        return None
    return json.dumps([spec.fork_from, spec.fork_offset, spec.fork_sub_offset])


def create(
    tx: Tx, name: str, spec: CreateSpec, now: float, *, fresh: bool = False
) -> Changed[CreateResult]:
    """Create stream *name* (or find it, created before with the same configuration).
    *fresh*: the name cannot exist yet (a new job's stream), so it is not looked up."""
    existing = None if fresh else _live(tx, name, now)
    if existing is not None:
        if existing.deleted:
            raise Conflict(f"stream {name} was deleted and is still referenced by forks")
        if not _same_config(existing, spec):
            raise Conflict(f"stream {name} already exists with a different configuration")
        return Changed(CreateResult(created=False, info=existing.info()), ())
    if spec.fork_from is not None:
        return Changed(CreateResult(created=True, info=_fork(tx, name, spec, now)), (name,))
    row = Row(
        id=0,
        name=name,
        content_type=spec.content_type,
        tail=sum(len(data) for data, _ in spec.units),
        closed=spec.closed,
        created_at=now,
        touched_at=now,
        ttl=spec.ttl,
        expires_at=spec.expires_at,
        last_seq=None,
        parent_id=None,
        fork_key=None,
        deleted=False,
        closed_by=None,
    )
    stream_id = tx.insert_stream(row)
    start = 0
    for data, count in spec.units:
        tx.insert_unit(stream_id, Unit(start, start + len(data), count, data))
        start += len(data)
    return Changed(CreateResult(created=True, info=replace(row, id=stream_id).info()), (name,))


def _fork(tx: Tx, name: str, spec: CreateSpec, now: float) -> StreamInfo:
    assert spec.fork_from is not None
    source = _live(tx, spec.fork_from, now)
    if source is None:
        raise NotFound(f"fork source not found: {spec.fork_from}")
    if source.deleted:
        raise Conflict(f"fork source was deleted: {spec.fork_from}")
    if spec.content_type_given and media_type(spec.content_type) != media_type(source.content_type):
        raise Conflict("a fork must have its source's content type")
    at = source.tail if spec.fork_offset is None else spec.fork_offset
    if at > source.tail:
        raise BadRequest("fork offset is beyond the end of the source", code="invalid_offset")
    partial: Unit | None = None
    if at < source.tail:
        unit = tx.unit_at(source.id, at)
        if unit is None:
            raise BadRequest("fork offset is not an offset of the source", code="invalid_offset")
        if spec.fork_sub_offset:
            partial = _prefix(
                unit,
                spec.fork_sub_offset,
                is_json=media_type(source.content_type) == "application/json",
            )
    elif spec.fork_sub_offset:
        raise BadRequest("Stream-Fork-Sub-Offset points past the end of the source")
    ttl, expires_at = spec.ttl, spec.expires_at
    if ttl is None and expires_at is None:
        ttl, expires_at = source.ttl, source.expires_at
    row = Row(
        id=0,
        name=name,
        content_type=source.content_type,
        tail=at + (partial.end - partial.start if partial else 0),
        closed=spec.closed,
        created_at=now,
        touched_at=now,
        ttl=ttl,
        expires_at=expires_at,
        last_seq=None,
        parent_id=source.id,
        fork_key=_fork_key(spec),
        deleted=False,
        closed_by=None,
    )
    stream_id = tx.insert_stream(row)
    tx.copy_units(source.id, stream_id, at)
    if partial is not None:
        tx.insert_unit(stream_id, partial)
    # The fork's own initial body follows what it inherited.
    tail = row.tail
    for data, count in spec.units:
        tx.insert_unit(stream_id, Unit(tail, tail + len(data), count, data))
        tail += len(data)
    if tail != row.tail:
        tx.update_stream(stream_id, tail=tail)
    return replace(row, id=stream_id, tail=tail).info()


def _prefix(unit: Unit, sub: int, *, is_json: bool) -> Unit:
    """The first *sub* bytes (or messages, for JSON) of *unit*, as a unit of its own."""
    if is_json:
        messages = json.loads(b"[" + unit.data + b"]")
        if sub > len(messages):
            raise BadRequest("Stream-Fork-Sub-Offset is larger than the append's message count")
        data = b",".join(_compact(m) for m in messages[:sub])
        return Unit(unit.start, unit.start + len(data), sub, data)
    if sub > len(unit.data):
        raise BadRequest("Stream-Fork-Sub-Offset is larger than the append's length")
    return Unit(unit.start, unit.start + sub, 1, unit.data[:sub])


def _compact(message: Any) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


# -- append and close ------------------------------------------------------------------------


def append(tx: Tx, name: str, spec: AppendSpec, now: float) -> Changed[AppendResult]:
    row = _require(tx, name, now)
    if spec.content_type is not None and media_type(spec.content_type) != media_type(
        row.content_type
    ):
        raise Conflict(
            f"content type {spec.content_type!r} does not match the stream's {row.content_type!r}",
            code="content_type_mismatch",
        )
    producer_epoch: int | None = None
    producer_seq: int | None = None
    new_epoch = False
    if spec.producer is not None:
        p = spec.producer
        state = tx.get_producer(row.id, p.id)
        if state is not None:
            epoch, last = state
            if p.epoch < epoch:
                raise Forbidden(
                    "stale producer epoch",
                    code="stale_epoch",
                    headers={"Producer-Epoch": str(epoch)},
                )
            if p.epoch == epoch and p.seq <= last:
                # A retry of something already written: succeed without writing again.
                return Changed(
                    AppendResult(
                        row.info(), duplicate=True, producer_epoch=epoch, producer_seq=last
                    ),
                    (),
                )
            if p.epoch == epoch and p.seq > last + 1:
                raise Conflict(
                    "producer sequence gap",
                    code="sequence_gap",
                    headers={
                        "Producer-Expected-Seq": str(last + 1),
                        "Producer-Received-Seq": str(p.seq),
                    },
                )
            if p.epoch > epoch and p.seq != 0:
                raise BadRequest("a new producer epoch must start at Producer-Seq 0")
            new_epoch = p.epoch > epoch
        elif p.seq != 0:
            raise Conflict(
                "producer sequence gap",
                code="sequence_gap",
                headers={"Producer-Expected-Seq": "0", "Producer-Received-Seq": str(p.seq)},
            )
        producer_epoch, producer_seq = p.epoch, p.seq
    if row.closed:
        if spec.unit is None and spec.close:
            # Closing a closed stream is idempotent: nothing to write, success.
            return Changed(
                AppendResult(
                    row.info(),
                    duplicate=True,
                    producer_epoch=producer_epoch,
                    producer_seq=producer_seq,
                ),
                (),
            )
        raise Conflict(
            "stream is closed",
            code="stream_closed",
            headers={"Stream-Closed": "true", "Stream-Next-Offset": format_offset(row.tail)},
        )
    if spec.stream_seq is not None and row.last_seq is not None and spec.stream_seq <= row.last_seq:
        raise Conflict("Stream-Seq must increase", code="sequence_regression")
    fields: dict[str, Any] = {"touched_at": now}
    tail = row.tail
    if spec.unit is not None:
        data, count = spec.unit
        tx.insert_unit(row.id, Unit(tail, tail + len(data), count, data))
        tail += len(data)
        fields["tail"] = tail
    if spec.stream_seq is not None:
        fields["last_seq"] = spec.stream_seq
    if spec.close:
        fields["closed"] = True
        if spec.producer is not None:
            fields["closed_by"] = json.dumps(
                [spec.producer.id, spec.producer.epoch, spec.producer.seq]
            )
    tx.update_stream(row.id, **fields)
    if spec.producer is not None:
        tx.put_producer(row.id, spec.producer.id, spec.producer.epoch, spec.producer.seq)
    # Built directly: dataclasses.replace() on the row cost more than the rest of an append.
    info = StreamInfo(
        id=row.id,
        name=row.name,
        content_type=row.content_type,
        tail=tail,
        closed=bool(row.closed or spec.close),
        created_at=row.created_at,
        touched_at=now,
        ttl=row.ttl,
        expires_at=row.expires_at,
        last_seq=spec.stream_seq if spec.stream_seq is not None else row.last_seq,
    )
    result = AppendResult(
        info, producer_epoch=producer_epoch, producer_seq=producer_seq, new_epoch=new_epoch
    )
    return Changed(result, (name,))


# -- delete and expiry -----------------------------------------------------------------------


def delete(tx: Tx, name: str, now: float) -> Changed[None]:
    row = _require(tx, name, now)
    _delete_row(tx, row)
    return Changed(None, (name,))


def _delete_row(tx: Tx, row: Row) -> None:
    """Remove *row*, or soft-delete it while forks still hang off it; then collect parents."""
    if tx.count_children(row.id):
        tx.update_stream(row.id, deleted=True)
        return
    tx.remove_stream(row.id)
    parent_id = row.parent_id
    while parent_id is not None:
        parent = tx.get_stream_by_id(parent_id)
        if parent is None or not parent.deleted or tx.count_children(parent.id):
            return
        tx.remove_stream(parent.id)
        parent_id = parent.parent_id


def sweep_expired(tx: Tx, now: float) -> Changed[None]:
    names = []
    for stream_id in tx.expired_ids(now):
        row = tx.get_stream_by_id(stream_id)
        if row is not None and not row.deleted:
            _delete_row(tx, row)
            names.append(row.name)
    return Changed(None, tuple(names))

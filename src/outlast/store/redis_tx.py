"""One optimistic Redis transaction, as the stream and job rules see it (:class:`RedisTx`).

Where it stands (the whole map is in :mod:`outlast.store`)::

    rules (streams_logic, jobs_logic)  ->  JobTx  ->  RedisTx (here)  ->  redis_engine (runs
    groups of rules in one RedisTx, commits)  ->  template.RuleStore / redis.RedisStore

Operations may name what they will read (:data:`Prefetch`: hashes, a queue's due jobs): the
engine reads it for the whole group in one round trip before the rules run.

The rules (:mod:`~outlast.store.streams_logic`, :mod:`~outlast.store.jobs_logic`) are synchronous
functions of a transaction. Here they run on the engine's thread against Redis like this:

- a read that this transaction has not made yet goes to Redis at once, preceded by ``WATCH`` of
  the key it reads (both in one round trip), and is kept in :attr:`RedisTx.base`;
- writes are not sent: they are recorded in a :class:`Layer`, and reads see them on top of what
  Redis said. Every operation of a group writes into its own layer, merged into the group's
  layer when it succeeds and dropped when it refuses (a savepoint);
- at the end the group's layer becomes one ``MULTI``/``EXEC``. If another process changed a
  watched key in between, ``EXEC`` does nothing and the engine runs the group again on fresh
  reads. So each group is atomic across every process sharing the Redis.

The keys it reads and writes are described in :mod:`outlast.store.redis_data`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from outlast.models import JobRecord, JobState, evolve_job, job_stream_name
from outlast.store import streams_logic as logic
from outlast.store import webhooks_logic as webhooks
from outlast.store.base import Unit
from outlast.store.jobs_logic import JobTx
from outlast.store.redis_data import (
    FOLD_MAX,
    ROW_FIELDS,
    Call,
    Command,
    IdBlock,
    Keys,
    Layer,
    decode_job,
    decode_job_reply,
    decode_row,
    decode_row_reply,
    dumps,
    encode_fields,
    fold_units,
    job_fields,
    loads,
    pack_job,
    pack_unit,
    pairs,
    ready_score,
    unfold_units,
    unpack_job,
    unpack_unit,
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Due:
    """A prefetch of a queue's due jobs, as a claim of up to *limit* of them reads them."""

    queue: str
    limit: int


@dataclass(frozen=True, slots=True)
class Field:
    """A prefetch of one field of a hash."""

    key: str
    field: str


@dataclass(frozen=True, slots=True)
class Members:
    """A prefetch of a whole sorted set (a stream's units, for the fold at its close)."""

    key: str


# What an operation asks to have read before it runs: a hash (its key), one of its fields, a
# whole sorted set, or due jobs.
Prefetch = str | Field | Members | Due

# A claim reads a queue's ready jobs this many at a time (then twice as many, and so on).
READY_BATCH = 64
# ... and reads and decodes their jobs this many at a time, as the claim takes them.
JOB_CHUNK = 16
# A whole sorted set prefetched (Members) is read up to this many members.
MEMBERS_PREFETCH = 1024
# Delayed jobs that became due are moved to the ready set this many at a time per claim.
PROMOTE_BATCH = 1000


class RedisTx(JobTx):
    def __init__(self, call: Call, keys: Keys, ids: IdBlock, now: float = 0.0) -> None:
        self._call = call
        # The group's time: a queued job is indexed as ready when due by then, else as delayed.
        self.now = now
        self.k = keys
        self._ids = ids
        self.watched: set[str] = set()
        self.base: dict[tuple[Any, ...], Any] = {}  # what Redis said, per read
        self.group = Layer()
        self.op = Layer()
        self.names: dict[int, str] = {}  # stream id -> name, for rows seen
        # Streams whose rows this group changed, with the units appended to each (in order),
        # per savepoint like the writes: after the commit, the node's caches learn them.
        self.streams: dict[str, list[Unit]] = {}
        # Decoded rows and jobs as this transaction sees them now: decoding is most of the cost
        # of a group, and the rules read the same row many times. A write to a key drops its
        # entry; so does a savepoint's rollback (for every key).
        self.decoded: dict[str, Any] = {}
        self.new_jobs: set[str] = set()
        self.op_streams: dict[str, list[Unit]] = {}
        self.queues_counted: set[str] = set()

    # -- savepoints -----------------------------------------------------------------------

    def begin(self) -> None:
        self.op = Layer()
        self.op_streams = {}

    def keep(self) -> None:
        self.group.merge(self.op)
        self.op = Layer()
        for name, units in self.op_streams.items():
            self.streams.setdefault(name, []).extend(units)
        self.op_streams = {}

    def drop(self) -> None:
        self.decoded.clear()
        self.op = Layer()
        self.op_streams = {}

    def stream_changes(self) -> list[tuple[str, logic.Row | None, list[Unit]]]:
        """Each stream this group changed: its row as committed (``None``: removed) and the
        units appended to it. Every such row was read or written here: no Redis call."""
        return [(name, self.get_stream(name), units) for name, units in self.streams.items()]

    def _touched(self, name: str) -> list[Unit]:
        return self.op_streams.setdefault(name, [])

    # -- reads from Redis -----------------------------------------------------------------

    def _fetch(self, key: str, cache_key: tuple[Any, ...], command: Command) -> Any:
        if cache_key in self.base:
            return self.base[cache_key]
        if key in self.watched:
            reply = self._call([command])[0]
        else:
            reply = self._call([("WATCH", key), command])[1]
            self.watched.add(key)
        self.base[cache_key] = reply
        return reply

    def prefetch(
        self, items: Sequence[Prefetch], now: float = 0.0, *, finished: bool = True
    ) -> None:
        """Read several hashes (and due jobs, as of *now*) in one round trip, each key
        watched, ahead of the rules asking for them one by one. With a job's hash, its
        finished record, unless *finished* is false (jobs that cannot have ended)."""
        todo: list[tuple[str, tuple[Any, ...], Command]] = []
        for item in dict.fromkeys(items):
            if isinstance(item, Due):
                # The delayed jobs that became due, and the head of the ready set.
                ranges = (
                    (self.k.due(item.queue), _bound(now, False), PROMOTE_BATCH),
                    (self.k.ready(item.queue), "+inf", max(item.limit, READY_BATCH)),
                )
                for key, high, limit in ranges:
                    low = _bound(-math.inf, False)
                    cached = self._cached_range(key, low, high, limit)
                    if self._cleared(key)[1] or cached is not None:
                        continue
                    command: Command = (
                        "ZRANGEBYSCORE",
                        key,
                        low,
                        high,
                        "WITHSCORES",
                        "LIMIT",
                        0,
                        limit,
                    )
                    todo.append((key, ("zrange", key, low, high), command))
            elif isinstance(item, Members):
                # At most MEMBERS_PREFETCH: a larger set is read in full only if asked for.
                key, low, high = item.key, "-inf", "+inf"
                if self._cached_range(key, low, high, None) is None and not self._cleared(key)[1]:
                    command = ("ZRANGEBYSCORE", key, low, high, "WITHSCORES")
                    command += ("LIMIT", 0, MEMBERS_PREFETCH)
                    todo.append((key, ("members", key), command))
            elif isinstance(item, Field):
                cache_key = ("hget", item.key, item.field)
                if (
                    cache_key not in self.base
                    and ("hgetall", item.key) not in self.base
                    and not self._cleared(item.key)[1]
                ):
                    todo.append((item.key, cache_key, ("HGET", item.key, item.field)))
            else:
                if ("hgetall", item) not in self.base and not self._cleared(item)[1]:
                    todo.append((item, ("hgetall", item), ("HGETALL", item)))
                if finished:
                    todo += self._finished_read(item)
        if not todo:
            return
        fresh = list(dict.fromkeys(key for key, _, _ in todo if key not in self.watched))
        commands: list[Command] = [("WATCH", *fresh)] if fresh else []
        commands += [command for _, _, command in todo]
        replies = self._call(commands)[len(commands) - len(todo) :]
        self.watched.update(fresh)
        for (_, cache_key, command), reply in zip(todo, replies, strict=True):
            if cache_key[0] == "zrange":
                self.base[cache_key] = (reply, command[-1])
            elif cache_key[0] == "members":
                self.base[("zrange", cache_key[1], "-inf", "+inf")] = (reply, MEMBERS_PREFETCH)
            else:
                self.base[cache_key] = reply

    def prefetch_jobs(self, job_ids: list[str], *, finished: bool = True) -> None:
        """A batch of jobs and their streams, in one round trip (*finished*: see prefetch)."""
        keys = [self.k.job(j) for j in job_ids]
        streams = [self.k.stream(job_stream_name(j)) for j in job_ids]
        self.prefetch(keys + streams, finished=finished)

    def _unwritten(self, key: str) -> bool:
        """Whether nothing was written to *key* here yet: Redis's reply is all there is."""
        op, group = self.op, self.group
        return (
            key not in op.hashes
            and key not in group.hashes
            and key not in op.cleared
            and key not in group.cleared
        )

    def _read_hash(
        self,
        key: str,
        from_reply: Callable[[list[bytes]], T],
        from_fields: Callable[[dict[str, str]], T],
    ) -> T | None:
        """A hash decoded: straight from Redis's reply when nothing was written to it here,
        else from its fields as this transaction sees them (``None``: no such hash)."""
        if self._unwritten(key):
            flat = self._fetch(key, ("hgetall", key), ("HGETALL", key))
            return from_reply(flat) if flat else None
        raw = self.hgetall(key)
        return None if raw is None else from_fields(raw)

    def _cleared(self, key: str) -> tuple[bool, bool]:
        """(cleared in this op, cleared in the group or this op)."""
        in_op = key in self.op.cleared
        return in_op, in_op or key in self.group.cleared

    def hgetall(self, key: str) -> dict[str, str] | None:
        in_op, cleared = self._cleared(key)
        merged: dict[str, str | None] = {}
        if not cleared:
            merged.update(pairs(self._fetch(key, ("hgetall", key), ("HGETALL", key))))
        if not in_op:
            merged.update(self.group.hashes.get(key, {}))
        merged.update(self.op.hashes.get(key, {}))
        out = {f: v for f, v in merged.items() if v is not None}
        return out or None

    def hget(self, key: str, field: str) -> str | None:
        for layer in (self.op, self.group):
            fields = layer.hashes.get(key)
            if fields is not None and field in fields:
                return fields[field]
            if key in layer.cleared:
                return None
        whole = self.base.get(("hgetall", key))
        if whole is not None:
            return pairs(whole).get(field)
        raw = self._fetch(key, ("hget", key, field), ("HGET", key, field))
        return None if raw is None else str(raw.decode())

    def counter(self, key: str, field: str) -> int:
        value = int(self.hget(key, field) or 0)
        return value + self.group.deltas.get((key, field), 0) + self.op.deltas.get((key, field), 0)

    def zrange(
        self,
        key: str,
        low: float,
        high: float,
        count: int | None = None,
        *,
        open_high: bool = False,
    ) -> list[tuple[bytes, float]]:
        """Members scored from *low* to *high* (exclusive with *open_high*), lowest first."""
        in_op, cleared = self._cleared(key)
        overlay: dict[bytes, float | None] = {}
        if not in_op:
            overlay.update(self.group.zsets.get(key, {}))
        overlay.update(self.op.zsets.get(key, {}))
        items: dict[bytes, float] = {}
        if not cleared:
            lo, hi = _bound(low, False), _bound(high, open_high)
            # Members changed here may leave the fetched range: fetch that many more.
            want = None if count is None else count + len(overlay)
            flat = self._cached_range(key, lo, hi, want)
            if flat is None:
                command: Command = ("ZRANGEBYSCORE", key, lo, hi, "WITHSCORES")
                if want is not None:
                    command += ("LIMIT", 0, want)
                flat = self._fetch(key, ("range-reply", *command[1:]), command)
                self.base[("zrange", key, lo, hi)] = (flat, want)
            items = {flat[i]: float(flat[i + 1]) for i in range(0, len(flat), 2)}
        for member, score in overlay.items():
            if score is None:
                items.pop(member, None)
            else:
                items[member] = score
        found = sorted(
            (
                (m, s)
                for m, s in items.items()
                if low <= s and (s < high or (s == high and not open_high))
            ),
            key=lambda item: (item[1], item[0]),
        )
        return found if count is None else found[:count]

    def _cached_range(self, key: str, low: str, high: str, want: int | None) -> list[Any] | None:
        """A range read already made that holds the first *want* members (all: ``None``)."""
        cached = self.base.get(("zrange", key, low, high))
        if cached is None:
            return None
        flat, limit = cached
        if limit is None or len(flat) < 2 * limit or (want is not None and limit >= want):
            return list(flat)
        return None

    # -- writes into the current layer ----------------------------------------------------

    def hset(self, key: str, fields: Mapping[str, str | None], *, replace: bool = False) -> None:
        self.decoded.pop(key, None)
        if replace:
            self.op.cleared.add(key)
            self.op.hashes.pop(key, None)
        self.op.hashes.setdefault(key, {}).update(fields)

    def delete(self, key: str) -> None:
        self.decoded.pop(key, None)
        self.op.cleared.add(key)
        self.op.hashes.pop(key, None)
        self.op.zsets.pop(key, None)
        self.op.strings.pop(key, None)

    def set_string(self, key: str, value: bytes) -> None:
        self.op.strings[key] = value

    def get_string(self, key: str) -> bytes | None:
        for layer in (self.op, self.group):
            if key in layer.strings:
                return layer.strings[key]
            if key in layer.cleared:
                return None
        reply: bytes | None = self._fetch(key, ("get", key), ("GET", key))
        return reply

    def zadd(self, key: str, member: bytes, score: float) -> None:
        self.op.zsets.setdefault(key, {})[member] = score

    def zrem(self, key: str, member: bytes) -> None:
        self.op.zsets.setdefault(key, {})[member] = None

    def incr(self, key: str, field: str, delta: int) -> None:
        self.op.deltas[(key, field)] = self.op.deltas.get((key, field), 0) + delta

    def commands(self) -> list[Command]:
        return self.group.commands()

    # -- streams --------------------------------------------------------------------------

    def get_stream(self, name: str) -> logic.Row | None:
        key = self.k.stream(name)
        if name.startswith("jobs/") and name[5:] in self.new_jobs:
            # The stream of a job created in this transaction (its id is new, and nothing but
            # its job writes under jobs/) cannot exist yet: no need to ask, or to watch.
            self.base.setdefault(("hgetall", key), [])
        if key in self.decoded:
            row: logic.Row | None = self.decoded[key]
            return row
        row = self._read_hash(key, decode_row_reply, decode_row)
        if row is not None:
            self.names[row.id] = name
        self.decoded[key] = row
        return row

    def _name(self, stream_id: int) -> str | None:
        name = self.names.get(stream_id)
        if name is None:
            name = self.hget(self.k.sids, str(stream_id))
        return name

    def _row_by_id(self, stream_id: int) -> logic.Row:
        row = self.get_stream_by_id(stream_id)
        if row is None:
            raise LookupError(f"no stream with id {stream_id}")
        return row

    def get_stream_by_id(self, stream_id: int) -> logic.Row | None:
        name = self._name(stream_id)
        if name is None:
            return None
        row = self.get_stream(name)
        return row if row is not None and row.id == stream_id else None

    def _new_id(self) -> int:
        if self._ids.next >= self._ids.end:
            end = int(self._call([("INCRBY", self.k.sseq, IdBlock.SIZE)])[0])
            self._ids.next, self._ids.end = end - IdBlock.SIZE + 1, end + 1
        value = self._ids.next
        self._ids.next += 1
        return value

    def insert_stream(self, row: logic.Row) -> int:
        row = dataclasses.replace(row, id=self._new_id())
        self._touched(row.name)
        self.names[row.id] = row.name
        key = self.k.stream(row.name)
        self.hset(
            key, encode_fields({name: getattr(row, name) for name in ROW_FIELDS}), replace=True
        )
        self.decoded[key] = row
        # Left-overs of an earlier stream of this name cannot exist, but never inherit any.
        self.delete(self.k.units(row.name))
        self.delete(self.k.folded(row.name))
        self.delete(self.k.producers(row.name))
        self.hset(self.k.sids, {str(row.id): row.name})
        if row.parent_id is not None:
            parent = str(row.parent_id)
            self.hset(self.k.children, {parent: str(self.count_children(row.parent_id) + 1)})
        self._index_expiry(row, None)  # a new id: not in the index yet
        return row.id

    def _index_expiry(self, row: logic.Row, before: float | None) -> None:
        """Index the stream by when it expires, if that changed from *before*."""
        expiry = _expiry(row)
        if expiry == before:
            return
        member = str(row.id).encode()
        if expiry is None:
            self.zrem(self.k.sexp, member)
        else:
            self.zadd(self.k.sexp, member, expiry)

    def update_stream(self, stream_id: int, **fields: Any) -> None:
        row = self._row_by_id(stream_id)
        self._touched(row.name)
        key = self.k.stream(row.name)
        self.hset(key, encode_fields(fields))
        self.decoded[key] = new = logic.Row(
            *[fields[name] if name in fields else getattr(row, name) for name in ROW_FIELDS]
        )
        if {"ttl", "expires_at", "touched_at"} & fields.keys():
            self._index_expiry(new, _expiry(row))
        # (Offsets count bytes: a tail past FOLD_MAX is more data than is folded.)
        if new.closed and not row.closed and new.tail <= FOLD_MAX:
            self._fold(row.name)

    def _fold(self, name: str) -> None:
        """A stream that closed: its units become one compressed record (no unit can follow).
        A large stream keeps its units one by one (FOLD_MAX)."""
        units = [unpack_unit(m) for m, _ in self.zrange(self.k.units(name), -math.inf, math.inf)]
        if not units or sum(len(u.data) for u in units) > FOLD_MAX:
            return
        self.delete(self.k.units(name))
        self.set_string(self.k.folded(name), fold_units(units))

    def remove_stream(self, stream_id: int) -> None:
        row = self._row_by_id(stream_id)
        self._touched(row.name)
        for key in (
            self.k.stream(row.name),
            self.k.units(row.name),
            self.k.folded(row.name),
            self.k.producers(row.name),
        ):
            self.delete(key)
        self.hset(self.k.sids, {str(stream_id): None})
        self.hset(self.k.children, {str(stream_id): None})
        self.zrem(self.k.sexp, str(stream_id).encode())
        if row.parent_id is not None:
            left = self.count_children(row.parent_id) - 1
            self.hset(self.k.children, {str(row.parent_id): str(left) if left > 0 else None})

    def count_children(self, stream_id: int) -> int:
        return int(self.hget(self.k.children, str(stream_id)) or 0)

    def _units(
        self, stream_id: int, low: float, high: float, *, open_high: bool = False
    ) -> list[Unit]:
        """The stream's units that start from *low* to *high*, in order: folded ones (a closed
        stream's) and those kept one by one."""
        name = self._name(stream_id)
        if name is None:
            raise LookupError(f"no stream with id {stream_id}")
        key = self.k.units(name)
        units = [unpack_unit(m) for m, _ in self.zrange(key, low, high, open_high=open_high)]
        row = self.get_stream(name)
        if row is not None and row.closed:
            record = self.get_string(self.k.folded(name))
            if record is not None:
                units += [
                    u
                    for u in unfold_units(record)
                    if low <= u.start and (u.start < high or (u.start == high and not open_high))
                ]
                units.sort(key=lambda u: u.start)
        return units

    def insert_unit(self, stream_id: int, unit: Unit) -> None:
        name = self._name(stream_id)
        if name is None:
            raise LookupError(f"no stream with id {stream_id}")
        self._touched(name).append(unit)
        self.zadd(self.k.units(name), pack_unit(unit), unit.start)

    def copy_units(self, source_id: int, target_id: int, before: int) -> None:
        name = self._name(target_id)
        if name is None:
            raise LookupError(f"no stream with id {target_id}")
        for unit in self._units(source_id, 0, before, open_high=True):
            if unit.end <= before:
                self.zadd(self.k.units(name), pack_unit(unit), unit.start)

    def unit_at(self, stream_id: int, start: int) -> Unit | None:
        found = self._units(stream_id, start, start)
        return found[0] if found else None

    def units_from(self, stream_id: int, start: int, max_bytes: int) -> list[Unit]:
        units: list[Unit] = []
        size = 0
        for unit in self._units(stream_id, start, math.inf):
            if units and size + len(unit.data) > max_bytes:
                break
            units.append(unit)
            size += len(unit.data)
        return units

    def get_producer(self, stream_id: int, producer_id: str) -> tuple[int, int] | None:
        name = self._name(stream_id)
        raw = None if name is None else self.hget(self.k.producers(name), producer_id)
        if raw is None:
            return None
        epoch, seq = raw.split()
        return int(epoch), int(seq)

    def put_producer(self, stream_id: int, producer_id: str, epoch: int, seq: int) -> None:
        name = self._name(stream_id)
        assert name is not None
        self.hset(self.k.producers(name), {producer_id: f"{epoch} {seq}"})

    def expired_ids(self, now: float) -> list[int]:
        return [int(m) for m, _ in self.zrange(self.k.sexp, -math.inf, now)]

    # -- jobs -----------------------------------------------------------------------------

    def _index_job(self, old: JobRecord | None, job: JobRecord) -> None:
        """Keep the job's index entries true to its (new) state: each index whose entry for
        the job changes (``old`` is the job as it was; ``None`` for a new one, which no index
        can hold yet: its id is new)."""
        member = job.id.encode()
        self._index_queued(old, job, member)
        for key, before, after in (
            (self.k.leases, _leased(old), _leased(job)),
            (self.k.done, _done(old), _done(job)),
            (self.k.hooks, _hook(old), _hook(job)),
        ):
            if old is not None and before == after:
                continue  # the same entry, or none before and after
            if before is not None and after is None:
                self.zrem(key, member)
            if after is not None:
                self.zadd(key, member, after[1])

    def _index_queued(self, old: JobRecord | None, job: JobRecord, member: bytes) -> None:
        """A queued job is in its queue's ready set when due (as of this group), else in its
        delayed set (due:<queue>, by run_at); claims move delayed jobs that became due."""
        after = None
        if job.state == JobState.QUEUED:
            after = (
                (self.k.ready(job.queue), ready_score(job.priority, job.turn))
                if job.run_at <= self.now
                else (self.k.due(job.queue), job.run_at)
            )
        if old is not None and old.state == JobState.QUEUED:
            # Where it was indexed depends on the time then: out of both, unless it stays.
            for key in (self.k.ready(old.queue), self.k.due(old.queue)):
                if after is None or key != after[0]:
                    self.zrem(key, member)
        if after is not None:
            self.zadd(after[0], member, after[1])

    def _finished_read(self, key: str) -> list[tuple[str, tuple[Any, ...], Command]]:
        """With a job's hash (*key*), its finished record is read, in the same round trip:
        a job is either (redis_data: j:<id>, jf:<id>). Nothing for other hashes."""
        record = self.k.finished_of(key)
        if record is None or ("get", record) in self.base:
            return []
        for layer in (self.op, self.group):
            if record in layer.strings or record in layer.cleared:
                return []  # written here: Redis's value is not needed
        return [(record, ("get", record), ("GET", record))]

    def _write_job(self, job: JobRecord, fields: dict[str, Any], *, new: bool) -> None:
        """Store the job as it now is (*fields*: what changed): a job that ends becomes one
        compressed record in place of its hash (a layout 3 store's finished jobs are hashes:
        they become records at their next write)."""
        key = self.k.job(job.id)
        if job.state.terminal:
            self.delete(key)
            self.set_string(self.k.finished_job(job.id), pack_job(job))
        else:
            self.hset(key, encode_fields(fields), replace=new)
        self.decoded[key] = job

    def insert_job(self, job: JobRecord) -> None:
        self.new_jobs.add(job.id)
        self._write_job(job, job_fields(job), new=True)
        self.zadd(self.k.jobs, job.id.encode(), 0)
        if job.key is not None:
            self.hset(self.k.jkeys, {job.key: job.id})
        self._index_job(None, job)

    def get_job(self, job_id: str) -> JobRecord | None:
        key = self.k.job(job_id)
        if key in self.decoded:
            cached: JobRecord | None = self.decoded[key]
            return cached
        self.prefetch([key])  # the hash and the finished record: one round trip
        record = self.get_string(self.k.finished_job(job_id))
        if record is not None:
            job: JobRecord | None = unpack_job(job_id, record)
        else:
            job = self._read_hash(key, decode_job_reply, decode_job)
        self.decoded[key] = job
        return job

    def lease_of(self, job_id: str) -> tuple[JobState, str | None, int] | None:
        key = self.k.job(job_id)
        if key in self.decoded:
            return super().lease_of(job_id)
        # Three fields (prefetched by an emit), never the job's input.
        state = self.hget(key, "state")
        if state is None:
            # No hash: a finished job (its record, read whole) or none. An emit to a job
            # that ended is refused either way.
            return super().lease_of(job_id)
        owner, attempt = self.hget(key, "lease_owner"), self.hget(key, "attempt")
        return (
            JobState(loads(state)),
            None if owner is None else loads(owner),
            0 if attempt is None else int(loads(attempt)),
        )

    def update_job(self, job_id: str, **fields: Any) -> None:
        old = self.get_job(job_id)
        if old is None:
            raise LookupError(f"no job {job_id}")
        job = evolve_job(old, fields)
        self._write_job(job, fields, new=False)
        self._index_job(old, job)

    def find_job_by_key(self, key: str) -> JobRecord | None:
        job_id = self.hget(self.k.jkeys, key)
        return None if job_id is None else self.get_job(job_id)

    def count_waiting(self, queue: str) -> int:
        return self.counter(self.k.counts(queue), JobState.QUEUED.value)

    def move_count(
        self, queue: str, old: JobState | None, new: JobState | None, n: int = 1
    ) -> None:
        key = self.k.counts(queue)
        if old is not None:
            self.incr(key, old.value, -n)
        if new is not None:
            self.incr(key, new.value, n)
        if queue not in self.queues_counted:
            self.queues_counted.add(queue)
            self.op.extra.append(("SADD", self.k.queues, queue))

    def _jobs(self, members: list[tuple[bytes, float]], state: JobState) -> list[JobRecord]:
        """The jobs of an index that are in *state*, one that is not an end: their hashes
        alone are read (a job that ended is a record, and not in that state)."""
        assert not state.terminal
        ids = [m.decode() for m, _ in members]
        self.prefetch_jobs(ids, finished=False)
        jobs = []
        for job_id in ids:
            key = self.k.job(job_id)
            job = self.decoded.get(key) or self._read_hash(key, decode_job_reply, decode_job)
            if job is None:
                continue  # not cached: a job without a hash may still be a record
            self.decoded[key] = job
            if job.state == state:
                jobs.append(job)
        return jobs

    def _promote(self, queue: str, now: float) -> None:
        """Delayed jobs of *queue* that are due now join its ready set."""
        became_due = self.zrange(self.k.due(queue), -math.inf, now, PROMOTE_BATCH)
        for job in self._jobs(became_due, JobState.QUEUED):
            member = job.id.encode()
            self.zrem(self.k.due(queue), member)
            self.zadd(self.k.ready(queue), member, ready_score(job.priority, job.turn))

    def ready(self, queue: str, now: float, keyed: bool, want: int = 0) -> Iterator[JobRecord]:
        self._promote(queue, now)
        key = self.k.ready(queue)
        count, seen = READY_BATCH, 0
        # The jobs a few at a time: a claim usually takes the first few of them, and reading
        # and decoding every member of the batch would cost most of the claim. The first read
        # is of as many as the claim wants (a worker with one free slot reads one hash).
        chunk = min(want, JOB_CHUNK) if want > 0 else JOB_CHUNK
        while True:
            members = self.zrange(key, -math.inf, math.inf, count)
            at = seen
            while at < len(members):
                jobs = self._jobs(members[at : at + chunk], JobState.QUEUED)
                at += chunk
                chunk = JOB_CHUNK
                if keyed:
                    running = self.k.key_running(queue)
                    keys = {j.concurrency_key for j in jobs if j.concurrency_key is not None}
                    self.prefetch([Field(running, k) for k in sorted(keys)])
                for job in jobs:
                    if job.run_at <= now:
                        yield job
            if len(members) < count:
                return
            seen, count = len(members), count * 2

    def queue_turn(self, queue: str) -> int:
        return int(self.hget(self.k.turns(queue), "turn") or 0)

    def advance_queue_turn(self, queue: str, turn: int) -> None:
        # Written without reading it first (no WATCH: a claim does not conflict with submits
        # over it). Claims take turns in order, so the value only lags, never jumps ahead.
        self.hset(self.k.turns(queue), {"turn": str(turn)})

    def key_turn(self, queue: str, key: str | None) -> int:
        if key is None:
            return int(self.hget(self.k.turns(queue), "lane") or 0)
        return int(self.hget(self.k.key_turns(queue), key) or 0)

    def set_key_turn(self, queue: str, key: str | None, turn: int) -> None:
        if key is None:
            self.hset(self.k.turns(queue), {"lane": str(turn)})
        else:
            self.hset(self.k.key_turns(queue), {key: str(turn)})

    def key_running(self, queue: str, key: str) -> int:
        return self.counter(self.k.key_running(queue), key)

    def move_key_running(self, queue: str, key: str, delta: int) -> None:
        self.incr(self.k.key_running(queue), key, delta)

    def expired_leases(self, now: float) -> list[JobRecord]:
        return self._jobs(self.zrange(self.k.leases, -math.inf, now), JobState.RUNNING)

    def finished_before(self, ts: float, limit: int) -> list[str]:
        found = self.zrange(self.k.done, -math.inf, ts, limit, open_high=True)
        return [m.decode() for m, _ in found]

    def delete_job(self, job_id: str) -> None:
        old = self.get_job(job_id)
        if old is None:
            return
        member = job_id.encode()
        self.delete(self.k.job(job_id))
        self.delete(self.k.finished_job(job_id))
        keys = (self.k.jobs, self.k.due(old.queue), self.k.ready(old.queue), self.k.leases)
        for key in (*keys, self.k.done, self.k.hooks):
            self.zrem(key, member)
        if old.key is not None:
            self.hset(self.k.jkeys, {old.key: None})

    def upstream_state(self, name: str) -> dict[str, Any] | None:
        raw = self.hget(self.k.upstream(name), "state")
        return None if raw is None else dict(loads(raw))

    def set_upstream_state(self, name: str, state: dict[str, Any]) -> None:
        self.hset(self.k.upstream(name), {"state": dumps(state)})

    def queue_paused(self, queue: str) -> bool:
        return self.hget(self.k.paused, queue) is not None

    def set_queue_paused(self, queue: str, paused: bool) -> None:
        self.hset(self.k.paused, {queue: "1" if paused else None})

    def paused_queues(self) -> set[str]:
        return set(self.hgetall(self.k.paused) or {})

    # -- completion webhooks --------------------------------------------------------------

    def due_deliveries(self, now: float, limit: int) -> list[JobRecord]:
        due = self.zrange(self.k.hooks, -math.inf, now, limit)
        ids = [m.decode() for m, _ in due]
        self.prefetch_jobs(ids)
        due_jobs = []
        for job_id in ids:
            job = self.get_job(job_id)
            due_at = None if job is None else webhooks.due_at(job.callback)
            if job is not None and due_at is not None and due_at <= now:
                due_jobs.append(job)
        return due_jobs

    def next_delivery_at(self) -> float | None:
        first = self.zrange(self.k.hooks, -math.inf, math.inf, 1)
        return first[0][1] if first else None

    def pending_deliveries(self) -> int:
        # For read-only views: what Redis holds (writes of this transaction not counted).
        return int(self._fetch(self.k.hooks, ("zcard", self.k.hooks), ("ZCARD", self.k.hooks)))


def _expiry(row: logic.Row) -> float | None:
    """When the stream expires (StreamInfo.expiry, without a StreamInfo)."""
    if row.expires_at is not None:
        return float(row.expires_at)
    if row.ttl is not None:
        return float(row.touched_at + row.ttl)
    return None


# A job's entry in an index, as (queue, score); None when it has none.
def _leased(job: JobRecord | None) -> tuple[str, float] | None:
    if job is None or job.state != JobState.RUNNING or job.lease_expires is None:
        return None
    return (job.queue, job.lease_expires)


def _done(job: JobRecord | None) -> tuple[str, float] | None:
    if job is None or not job.state.terminal or job.finished_at is None:
        return None
    return (job.queue, job.finished_at)


def _hook(job: JobRecord | None) -> tuple[str, float] | None:
    due = None if job is None else webhooks.due_at(job.callback)
    return None if due is None else ("", due)


def _bound(value: float, open_: bool) -> str:
    if value == math.inf:
        return "+inf"
    if value == -math.inf:
        return "-inf"
    return ("(" if open_ else "") + repr(float(value))

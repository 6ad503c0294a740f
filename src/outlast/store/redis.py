"""The shared store: one Redis for many ``serve`` and ``worker`` processes
(``redis://host:port/db?prefix=outlast:``).

Writes run the same stream and job rules as the SQLite store, as optimistic Redis transactions
on a writer thread (:mod:`outlast.store.redis_engine`, :mod:`outlast.store.redis_tx`): atomic
across every process, so admission never overshoots a queue's capacity, a job is claimed by one
worker at a time and offsets only grow. Reads go straight to Redis (a read of a stream is one
server-side script, so it sees one committed state).

Every commit publishes the stream names and queues it changed on one channel; each process
listens and wakes its own live readers and idle workers, so a reader on one node follows a
stream written on another without polling. When the subscription drops (a Redis restart), the
listener reconnects by itself and wakes every local waiter, as notifications may have been
missed. While Redis cannot be reached, operations fail fast with
:class:`~outlast.errors.StoreUnavailable` (HTTP 503 + ``Retry-After``).

Durability is Redis's: see ``docs/redis.md``. At start the store checks the server's
persistence settings and warns when an acknowledged write could be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from outlast.errors import NotFound, RequestError, StoreError, StoreUnavailable
from outlast.models import JobRecord, NewJob, job_stream_name
from outlast.store import base
from outlast.store import streams_logic as logic
from outlast.store.base import ReadResult, StreamInfo, Unit
from outlast.store.jobs_logic import JobTx
from outlast.store.notify import Notifier
from outlast.store.recent import RecentUnits
from outlast.store.redis_data import (
    IdBlock,
    Keys,
    decode_row,
    stored_job,
    unfold_units,
    unpack_unit,
)
from outlast.store.redis_engine import OUTAGE_RETRY_AFTER, StreamChange, WriterEngine
from outlast.store.redis_setup import (
    COMMAND_TIMEOUT,
    RedisURL,
    check_durability,
    check_layout,
    check_version,
    parse_url,
    text,
)
from outlast.store.redis_tx import Due, Field, Members, Prefetch, RedisTx
from outlast.store.streams_logic import Changed
from outlast.store.template import JobFilter, Rule, RuleStore

log = logging.getLogger("outlast.store.redis")

T = TypeVar("T")

LIST_BATCH = 200
# The subscription is re-established after a drop with this back-off (seconds, doubling).
RESUBSCRIBE_MIN = 0.05
RESUBSCRIBE_MAX = 1.0
SUBSCRIBE_TIMEOUT = 5.0
# Streams whose latest row each node keeps for head() (those it wrote last).
MAX_HEADS = 4096
# Connections to Redis for reads, per node: more concurrent reads wait for one.
MAX_CONNECTIONS = 64
# A stream read that finds every pooled connection busy for COMMAND_TIMEOUT queues again while
# Redis answers the node's other calls, up to this long in all: under overload a live reader
# falls behind and catches up rather than ending. A call that fails meanwhile (or the
# subscription dropping) means Redis is in trouble: the read then fails as an outage (503).
READ_QUEUE_LIMIT = 60.0
# ... and apart from them, for the node's own upkeep (a claim loop's look at its queue, the
# memory watch), so that readers queueing for the pool under overload never stall the workers.
UPKEEP_CONNECTIONS = 4
# With Redis's maxmemory set, new work (submissions, stream creations and appends) is refused
# with 503 once Redis uses this share of it: the rest is kept for the work already accepted
# (running jobs' events and outcomes), which Redis would refuse too once memory is full.
MEMORY_REFUSE_AT = 0.9
MEMORY_POLL = 0.1  # seconds between two looks at Redis's memory (INFO memory)
MEMORY_RETRY_AFTER = 5.0
# What an emit reads of its job (jobs_logic.JobTx.lease_of).
LEASE_FIELDS = ("state", "lease_owner", "attempt")


class _Snapshot(RedisTx):
    """What one read script returned, for the read rules (nothing else is asked of it)."""

    def __init__(self, keys: Keys, row: logic.Row | None, units: list[Unit]) -> None:
        super().__init__(_no_calls, keys, IdBlock())
        self.row = row
        self.units = units

    def get_stream(self, name: str) -> logic.Row | None:
        return self.row

    def units_from(self, stream_id: int, start: int, max_bytes: int) -> list[Unit]:
        return self.units


def _pooled(parsed: RedisURL, connections: int) -> aioredis.Redis:
    """A client on a bounded pool: more concurrent calls queue for a connection rather than
    opening more."""
    pool = aioredis.BlockingConnectionPool(
        max_connections=connections,
        timeout=COMMAND_TIMEOUT,
        retry=AsyncRetry(NoBackoff(), 0),  # outlast decides what to retry, and when
        **parsed.params,
    )
    return aioredis.Redis.from_pool(pool)  # closing the client closes the pool


def _pool_busy(exc: BaseException) -> bool:
    """Whether *exc* says this node was too busy to get a connection in time (Redis may be
    well): the pool had no connection free, or a new pooled connection did not finish
    connecting within the timeout, which is measured on this node's event loop (an overloaded
    loop runs the handshake late). A Redis that is gone refuses connections instead, or fails
    this node's other calls and its subscription (see ``_read``)."""
    if isinstance(exc, RedisTimeoutError):
        return str(exc).startswith("Timeout connecting")
    return (
        isinstance(exc, RedisConnectionError)
        and isinstance(exc.__cause__, TimeoutError)
        and "No connection available" in str(exc)  # (not a connect that timed out)
    )


def _no_calls(commands: Any) -> list[Any]:
    raise AssertionError("a snapshot does not query Redis")


class RedisStore(RuleStore[Prefetch]):
    def __init__(
        self, url: RedisURL, client: aioredis.Redis, upkeep: aioredis.Redis, engine: WriterEngine
    ) -> None:
        self.url = url
        self.client = client  # readers (streams, jobs, listings)
        self.upkeep = upkeep  # this node's own reads (UPKEEP_CONNECTIONS)
        self.engine = engine
        self.keys = engine.keys
        self.notifier = engine.notifier
        self.node = engine.node
        self.recent = RecentUnits()
        # The latest row of streams this node changed, for head() without a round trip. An
        # entry is dropped when another node changes the stream (its notification) or when
        # notifications may have been missed (a reconnect).
        self.heads: OrderedDict[str, StreamInfo] = OrderedDict()
        # What this node's reads last found of other nodes' streams, for a live reader's look
        # before it waits (not for head(): a read can be older than a write acknowledged by
        # another node). An entry is kept only if its stream did not change while the read
        # was in flight: `changes` counts the changes this node heard of, `changed_at` tells
        # when each of the latest MAX_HEADS streams changed last, and the others changed at
        # `changed_before` at the latest.
        self.seen: OrderedDict[str, StreamInfo] = OrderedDict()
        self.changes = 0
        self.changed_at: OrderedDict[str, int] = OrderedDict()
        self.changed_before = 0
        engine.on_commit = self._committed
        engine.on_unknown = self._forget_all
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()
        # Redis's maxmemory (0: none) and used memory at the last look, and what this node
        # admitted since (an estimate): new work is refused near the limit (MEMORY_REFUSE_AT).
        self.memory_limit = 0
        self.memory_used = 0
        self.memory_admitted = 0
        self.memory_full = False
        # When a call to Redis last failed, or the subscription dropped (time.monotonic()).
        self.failed_at = float("-inf")

    @classmethod
    async def open(cls, url: str) -> RedisStore:
        parsed = parse_url(url)
        # A bounded pool: a thousand concurrent readers queue for a connection rather than
        # opening a thousand connections.
        client = _pooled(parsed, MAX_CONNECTIONS)
        try:
            info = await client.info("server")
        except RedisError as exc:
            await client.aclose()
            raise StoreError(f"cannot reach redis at {parsed.display}: {exc}") from exc
        try:
            check_version(info, parsed.display)
            await check_layout(client, parsed.prefix, parsed.display)
        except StoreError:
            await client.aclose()
            raise
        await check_durability(client, parsed.display)
        node = f"{socket.gethostname()}:{secrets.token_hex(6)}"
        engine = WriterEngine(
            parsed.params,
            Keys(parsed.prefix, parsed.params["db"]),
            Notifier(),
            node,
            asyncio.get_running_loop(),
        )
        engine.start()
        store = cls(parsed, client, _pooled(parsed, UPKEEP_CONNECTIONS), engine)
        store._tasks.append(asyncio.create_task(store._listen(), name="outlast-redis-listen"))
        store._tasks.append(asyncio.create_task(store._sweep_forever(), name="outlast-redis-sweep"))
        store._tasks.append(asyncio.create_task(store._watch_memory(), name="outlast-redis-memory"))
        # Changes committed after open() returns must reach this process's readers.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(store._subscribed.wait(), SUBSCRIBE_TIMEOUT)
        return store

    # -- plumbing ---------------------------------------------------------------------------

    async def _redis(self, call: Awaitable[T]) -> T:
        """Await a call to Redis, translating an outage into StoreUnavailable (503)."""
        try:
            return await call
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    async def _read(self, call: Callable[[], Awaitable[T]]) -> T:
        """A stream read: like :meth:`_redis`, but queueing again for a pooled connection
        while Redis is well (see READ_QUEUE_LIMIT)."""
        started = time.monotonic()
        while True:
            try:
                return await call()
            except (RedisError, OSError) as exc:
                queued = time.monotonic() - started
                if not _pool_busy(exc) or self.failed_at >= started or queued > READ_QUEUE_LIMIT:
                    raise self._unavailable(exc) from exc
                # (The pool waited COMMAND_TIMEOUT for a connection: not a busy loop.)

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        if not _pool_busy(exc):
            self.failed_at = time.monotonic()
        return StoreUnavailable(
            f"redis at {self.url.display} is unavailable: {exc}",
            retry_after=OUTAGE_RETRY_AFTER,
        )

    # -- memory ---------------------------------------------------------------------------

    async def _watch_memory(self) -> None:
        """Follow Redis's memory use against its maxmemory (see MEMORY_REFUSE_AT)."""
        task = asyncio.current_task()
        # (A cancellation during the call may come out of redis-py as a connection error.)
        while task is None or not task.cancelling():
            with contextlib.suppress(RedisError, OSError):  # an outage is reported elsewhere
                self._memory(await self.upkeep.info("memory"))
            await asyncio.sleep(MEMORY_POLL)

    def _memory(self, info: dict[str, Any]) -> None:
        self.memory_limit = int(info.get("maxmemory") or 0)
        self.memory_used = int(info.get("used_memory") or 0)
        self.memory_admitted = 0
        full = self._near_limit(0)
        if full and not self.memory_full:
            log.warning(
                "redis at %s is nearly out of memory (%d of maxmemory %d bytes used): new work "
                "is refused until memory is freed (docs/redis.md#memory)",
                *(self.url.display, self.memory_used, self.memory_limit),
            )
        elif self.memory_full and not full:
            log.warning("redis at %s has memory again: new work is accepted", self.url.display)
        self.memory_full = full

    def _near_limit(self, size: int) -> bool:
        limit = self.memory_limit
        used = self.memory_used + self.memory_admitted + size
        return limit > 0 and used >= limit * MEMORY_REFUSE_AT

    def _admit(self, size: Callable[[], int]) -> None:
        """Refuse new work while Redis's memory is nearly full (503 + Retry-After). *size*:
        about what the work adds (counted against the limit until the next look)."""
        if not self.memory_limit:
            return
        # Redis keeps more than the data: twice it, and a kilobyte for the keys.
        added = 2 * size() + 1024
        if self._near_limit(added):
            raise StoreUnavailable(
                f"redis at {self.url.display} is nearly out of memory (maxmemory "
                f"{self.memory_limit} bytes): new work is refused until memory is freed",
                retry_after=MEMORY_RETRY_AFTER,
            )
        self.memory_admitted += added

    async def submit_job(self, new: NewJob, capacity: int) -> base.SubmitResult:
        self._admit(lambda: len(json.dumps(new.input, default=str)))
        return await super().submit_job(new, capacity)

    async def submit_jobs(
        self, batch: Sequence[tuple[NewJob, int]]
    ) -> list[base.SubmitResult | RequestError]:
        self._admit(lambda: sum(len(json.dumps(new.input, default=str)) for new, _ in batch))
        return await super().submit_jobs(batch)

    async def retry_job(self, job_id: str, capacity: int) -> base.SubmitResult:
        self._admit(lambda: 0)
        return await super().retry_job(job_id, capacity)

    async def create_stream(self, name: str, spec: base.CreateSpec) -> base.CreateResult:
        self._admit(lambda: sum(len(data) for data, _ in spec.units))
        return await super().create_stream(name, spec)

    async def append(self, name: str, spec: base.AppendSpec) -> base.AppendResult:
        self._admit(lambda: 0 if spec.unit is None else len(spec.unit[0]))
        return await super().append(name, spec)

    # -- the template's primitives -----------------------------------------------------------

    def _change(self, rule: Rule[T], prefetch: Sequence[Prefetch] = ()) -> Awaitable[Changed[T]]:
        return self.engine.write(rule, prefetch)

    def _view(self, query: Callable[[JobTx], T]) -> Awaitable[T]:
        # A transaction on the writer thread that only reads. The contract's reads do not come
        # here: they read from the client, faster (see below).
        return self.engine.write(lambda tx, now: query(tx))

    def _prefetch_submit(self, new: NewJob) -> Sequence[Prefetch]:
        found: list[Prefetch] = [self.keys.counts(new.queue), self.keys.turns(new.queue)]
        if new.concurrency_key is not None:
            found.append(Field(self.keys.key_turns(new.queue), new.concurrency_key))
        if new.key is not None:
            found.append(Field(self.keys.jkeys, new.key))
        return found

    def _prefetch_due(self, queue: str, limit: int) -> Sequence[Prefetch]:
        return [Due(queue, limit), self.keys.paused]

    def _prefetch_jobs(self, job_ids: list[str]) -> Sequence[Prefetch]:
        return [self.keys.job(j) for j in job_ids]

    def _prefetch_held(self, held: list[tuple[str, float]]) -> Sequence[Prefetch]:
        return [self.keys.job(job_id) for job_id, _ in held]

    def _prefetch_running(self, job_id: str) -> Sequence[Prefetch]:
        stream = job_stream_name(job_id)
        # The stream's units too: an attempt's end may close the stream, which folds them.
        return [self.keys.job(job_id), self.keys.stream(stream), Members(self.keys.units(stream))]

    def _prefetch_emit(self, job_id: str) -> Sequence[Prefetch]:
        job = self.keys.job(job_id)
        lease = [Field(job, name) for name in LEASE_FIELDS]
        return [*lease, self.keys.stream(job_stream_name(job_id))]

    # -- following other nodes ----------------------------------------------------------------

    async def _listen(self) -> None:
        """Follow other processes' commits; reconnect after a drop and wake every waiter."""
        delay = RESUBSCRIBE_MIN
        down_since: float | None = None
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(self.keys.changes)
                # Listening only once Redis confirmed: what is committed after this is heard.
                async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                    while True:
                        confirmed = await pubsub.get_message(timeout=SUBSCRIBE_TIMEOUT)
                        if confirmed is not None and confirmed.get("type") == "subscribe":
                            break
                if down_since is not None:
                    log.warning(
                        "redis subscription restored after %.1f s", time.monotonic() - down_since
                    )
                    down_since = None
                # Whatever was published while we were not listening is lost: everyone
                # re-checks (readers re-read their stream, workers claim again).
                self._forget_all()
                self._subscribed.set()
                delay = RESUBSCRIBE_MIN
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._on_message(message["data"])
            except (RedisError, OSError, TimeoutError) as exc:
                self.failed_at = time.monotonic()  # readers queueing for the pool give up
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("redis subscription lost (%s); reconnecting", exc)
                    # Other nodes' changes go unheard now: forget what may turn stale, and
                    # let every waiter re-check (they get the outage, or carry on).
                    self._forget_all()
            finally:
                with contextlib.suppress(RedisError, OSError):
                    # Untyped in older redis-py releases, typed in newer ones.
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
            await asyncio.sleep(delay)  # back-off between reconnection attempts
            delay = min(RESUBSCRIBE_MAX, delay * 2)

    def _forget_all(self) -> None:
        """Changes may have gone unheard: drop the caches and let every waiter re-check."""
        self.recent.forget()
        self.heads.clear()
        self.seen.clear()
        self.changes += 1
        self.changed_at.clear()
        self.changed_before = self.changes
        self.notifier.changed_all()

    def _heard(self, name: str) -> None:
        """*name* changed (a commit of this node or another's): what was seen of it is old."""
        self.seen.pop(name, None)
        self.changes += 1
        self.changed_at[name] = self.changes
        self.changed_at.move_to_end(name)
        while len(self.changed_at) > MAX_HEADS:
            _, self.changed_before = self.changed_at.popitem(last=False)

    def _saw(self, name: str, info: StreamInfo, since: int) -> None:
        """A read that started when `changes` was *since* found *info*."""
        if self.changed_at.get(name, self.changed_before) > since or info.expiry() is not None:
            return  # changed meanwhile; or expiring (a look must check the expiry)
        self.seen[name] = info
        self.seen.move_to_end(name)
        while len(self.seen) > MAX_HEADS:
            self.seen.popitem(last=False)

    def _on_message(self, data: bytes) -> None:
        try:
            node, names = json.loads(data)
        except ValueError:
            return
        if node == self.node:
            return  # our own commit: local readers were woken already
        for name in names:
            self.recent.forget(name)
            self.heads.pop(name, None)
            self._heard(name)
            self.notifier.changed(name)

    def _committed(self, changes: list[StreamChange]) -> None:
        """This node's commit changed these streams: keep what live readers need in memory."""
        for name, row, units in changes:
            self._heard(name)
            if row is None or row.deleted:
                self.recent.forget(name)
                self.heads.pop(name, None)
                continue
            info = row.info()
            self.recent.committed(name, info, units)
            if info.expiry() is not None:
                self.heads.pop(name, None)  # head() must check expiry: never cached
                continue
            self.heads[name] = info
            self.heads.move_to_end(name)
            while len(self.heads) > MAX_HEADS:
                self.heads.popitem(last=False)

    # -- streams: reads straight from the client ---------------------------------------------

    async def _read_stream(
        self, name: str, position: int, max_bytes: int, now: float
    ) -> ReadResult:
        # The row and its units in one transaction, so that they agree. A unit's score is its
        # start offset, and offsets count bytes: the units that start within max_bytes of the
        # position hold what the read may return, and Redis sends them straight from the set
        # (a script gathering them instead costs Redis time per byte; see docs/benchmarks.md).
        # A closed stream's units may be folded into one record (redis_data.fold_units).
        since = self.changes

        def query() -> Awaitable[list[Any]]:
            pipe = self.client.pipeline(transaction=True)
            pipe.hgetall(self.keys.stream(name))
            pipe.zrangebyscore(self.keys.units(name), position, position + max_bytes)
            pipe.get(self.keys.folded(name))
            return pipe.execute()

        flat, members, folded = await self._read(query)
        row = decode_row(_texts(flat)) if flat else None
        found = [unpack_unit(member) for member in members]
        if folded is not None:
            end = position + max_bytes
            found += [u for u in unfold_units(folded) if position <= u.start <= end]
            found.sort(key=lambda u: u.start)
        units: list[Unit] = []
        size = 0
        for unit in found:
            if units and size + len(unit.data) > max_bytes:
                break  # at least one unit, then no more than max_bytes
            units.append(unit)
            size += len(unit.data)
        result = logic.read(_Snapshot(self.keys, row, units), name, position, max_bytes, now)
        self._saw(name, result.info, since)
        return result

    async def head(self, name: str) -> StreamInfo:
        known = self.heads.get(name)
        if known is not None:
            return known
        flat = await self._read(lambda: self.client.hgetall(self.keys.stream(name)))
        row = decode_row(_texts(flat)) if flat else None
        return logic.head(_Snapshot(self.keys, row, []), name, time.time())

    async def wait(self, name: str, position: int, timeout: float) -> bool:
        # Register before checking, so that a commit after the check still wakes us.
        waiter = self.notifier.waiter(name, timeout)
        try:
            # What this node's last read of the stream found, if nothing changed since: a reader
            # waits after a read that reached the tail, and wakes at the next change.
            info = self.seen.get(name) or await self.head(name)
            if info.tail > position or info.closed:
                return True
            # Woken: the stream changed (or notifications may have been missed: a reconnect).
            # The caller reads next, which tells. A re-check here would cost every reader of
            # another node's stream one more round trip per change; a wake-up for nothing
            # costs one read, as the re-check would.
            return await waiter
        finally:
            waiter.cancel()

    # -- jobs: reads straight from the client -------------------------------------------------

    async def get_job(self, job_id: str) -> JobRecord:
        pipe = self.client.pipeline(transaction=False)
        _read_job(pipe, self.keys, job_id)
        job = stored_job(job_id, *await self._redis(pipe.execute()))
        if job is None:
            raise NotFound(f"job not found: {job_id}", code="job_not_found")
        return job

    async def _find_jobs(self, where: JobFilter, below: str | None, limit: int) -> list[JobRecord]:
        found: list[JobRecord] = []
        upper = "+" if below is None else "(" + below
        while len(found) < limit:
            ids = await self._redis(
                self.client.zrevrangebylex(self.keys.jobs, upper, "-", start=0, num=LIST_BATCH)
            )
            if not ids:
                break
            pipe = self.client.pipeline(transaction=False)
            for job_id in ids:
                _read_job(pipe, self.keys, text(job_id))
            replies = await self._redis(pipe.execute())
            for at, job_id in enumerate(ids):
                job = stored_job(text(job_id), replies[2 * at], replies[2 * at + 1])
                if job is None:
                    continue  # removed meanwhile
                if where.matches(job):
                    found.append(job)
            upper = "(" + text(ids[-1])
        return found

    async def paused_queues(self) -> set[str]:
        return {text(q) for q in await self._redis(self.client.hkeys(self.keys.paused))}

    async def queue_counts(self) -> dict[str, dict[str, int]]:
        members = await self._redis(self.client.smembers(self.keys.queues))
        queues = sorted(text(m) for m in members)
        pipe = self.client.pipeline(transaction=True)  # one consistent moment
        for name in queues:
            pipe.hgetall(self.keys.counts(name))
        replies = await self._redis(pipe.execute()) if queues else []
        return {
            name: {text(k): int(v) for k, v in flat.items()}
            for name, flat in zip(queues, replies, strict=True)
        }

    async def next_due(self, queue: str) -> float | None:
        pipe = self.upkeep.pipeline(transaction=False)
        pipe.hexists(self.keys.paused, queue)
        pipe.zcard(self.keys.ready(queue))
        pipe.zrange(self.keys.due(queue), 0, 0, withscores=True)
        paused, ready, first = await self._redis(pipe.execute())
        if paused:
            return None  # nothing becomes due until it is resumed
        if ready:
            return time.time()  # due already (waiting for a slot of its key, say)
        return float(first[0][1]) if first else None

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.engine.close()
        await self.client.aclose()
        await self.upkeep.aclose()

    # -- settings shared by every node ------------------------------------------------------

    async def meta_setdefault(self, key: str, value: str) -> str:
        name = f"{self.keys.prefix}meta:{key}"
        await self._redis(self.client.set(name, value, nx=True))
        stored = await self._redis(self.client.get(name))
        return text(stored)


def _read_job(pipe: Pipeline, keys: Keys, job_id: str) -> None:
    """Queue the reads of a job: its hash, then its finished record (redis_data.stored_job).
    In this order, no transaction is needed: a job that ends in between is read as ended."""
    pipe.hgetall(keys.job(job_id))
    pipe.get(keys.finished_job(job_id))


def _texts(flat: dict[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in flat.items()}

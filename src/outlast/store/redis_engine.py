"""Group commit on Redis: one writer thread per process runs the rules as optimistic transactions.

Operations (functions of a :class:`~outlast.store.redis_tx.RedisTx` and ``now``) are queued from
the event loop. The writer thread takes every operation waiting, runs them one after another in
one :class:`RedisTx` (each in its own savepoint: a refused operation's writes are dropped), and
commits the group with one ``MULTI``/``EXEC`` that also publishes the names that changed. When
another process changed a key this group read, ``EXEC`` is refused and the group runs again on
fresh data, so concurrent groups on many machines behave as if run one at a time.

The thread talks to Redis over one plain connection of its own (``WATCH`` state belongs to a
connection), with blocking calls: the rules are synchronous, and a read they need is one round
trip away. The event loop never waits on this thread except for the operation's own result.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import hiredis
import redis
from redis.backoff import NoBackoff
from redis.exceptions import OutOfMemoryError, RedisError, ResponseError
from redis.retry import Retry

from outlast.errors import StoreError, StoreUnavailable
from outlast.store import streams_logic as logic
from outlast.store.base import Unit
from outlast.store.group_commit import groups, resolve
from outlast.store.notify import Notifier
from outlast.store.redis_data import Command, IdBlock, Keys
from outlast.store.redis_tx import Prefetch, RedisTx

log = logging.getLogger("outlast.store.redis")

T = TypeVar("T")
Op = Callable[[RedisTx, float], Any]
Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]
# An operation, what it will read (fetched for the whole group in one round trip), and the
# future of its caller.
Item = tuple[Op, Sequence[Prefetch], "asyncio.Future[Any]"]
# A stream a commit changed: its name, its committed row (None: removed), the units appended.
StreamChange = tuple[str, logic.Row | None, list[Unit]]
# What one group came to: every operation's outcome, and the streams it changed (None: not
# known, as the connection failed while the commit may have gone through).
Result = tuple[list[Outcome], list[StreamChange] | None]

# Operations that join one transaction at most: bounds what one conflict makes us redo.
MAX_GROUP = 256
# A group that keeps conflicting with other processes is retried this often, with a short
# random back-off (so that two nodes do not keep colliding in step), then given up as 503.
MAX_CONFLICTS = 200
CONFLICT_BACKOFF = 0.0005
CONFLICT_BACKOFF_MAX = 0.02
# After this many conflicts in a row, a large group is split so that each part commits alone.
SPLIT_AFTER = 3
OUTAGE_RETRY_AFTER = 2.0


class Wire:
    """The writer thread's own connection: commands sent in one round trip, replies in order."""

    def __init__(self, params: dict[str, Any]) -> None:
        # redis-py's connection classes are untyped: held as Any.
        connection_class: Any = redis.Connection
        # No retries of its own: outlast decides what to retry, and when.
        self.conn: Any = connection_class(retry=Retry(NoBackoff(), 0), **params)
        self.where = f"{params.get('host')}:{params.get('port')}"

    def call(self, commands: Sequence[Command]) -> list[Any]:
        # hiredis packs a command in C: a group's EXEC holds dozens of commands, and redis-py's
        # own packer spends more time on them than Redis does.
        # (The stub of pack_command types its argument as a tuple of one element.)
        packed = b"".join([hiredis.pack_command(c) for c in commands])  # type: ignore[arg-type]
        try:
            self.conn.send_packed_command([packed], check_health=False)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(self.conn.read_response())
                except ResponseError as exc:
                    replies.append(exc)
        except (RedisError, OSError) as exc:
            self.conn.disconnect()
            raise StoreUnavailable(
                f"redis at {self.where} is unavailable: {exc}", retry_after=OUTAGE_RETRY_AFTER
            ) from exc
        for reply in replies:
            if isinstance(reply, ResponseError):
                self.reset()
                if isinstance(reply, OutOfMemoryError):
                    # maxmemory reached (noeviction): the transaction was not applied.
                    raise StoreUnavailable(
                        f"redis at {self.where} is out of memory: {reply}",
                        retry_after=OUTAGE_RETRY_AFTER,
                    )
                raise StoreError(f"redis refused a command: {reply}")
        return replies

    def reset(self) -> None:
        """Forget any WATCH and MULTI state: the next group starts clean."""
        self.conn.disconnect()

    def close(self) -> None:
        self.conn.disconnect()


class WriterEngine(threading.Thread):
    def __init__(
        self,
        params: dict[str, Any],
        keys: Keys,
        notifier: Notifier,
        node: str,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(name="outlast-redis-writer", daemon=True)
        self.wire = Wire(params)
        self.keys = keys
        self.notifier = notifier
        self.node = node
        self.loop = loop
        self.ids = IdBlock()
        self.ops: queue.SimpleQueue[Item | None] = queue.SimpleQueue()
        self.conflicts = 0  # groups redone because another process got there first
        # Called on the loop with the streams a commit changed, before any reader is woken.
        self.on_commit: Callable[[list[StreamChange]], None] = lambda changes: None
        # Called on the loop when a commit's outcome is unknown (the connection failed during
        # it): it may have changed anything, and this node skips its own notifications.
        self.on_unknown: Callable[[], None] = lambda: None

    async def write(
        self, op: Callable[[RedisTx, float], T], prefetch: Sequence[Prefetch] = ()
    ) -> T:
        future: asyncio.Future[T] = self.loop.create_future()
        self.ops.put((op, prefetch, future))
        return await future

    def run(self) -> None:
        for group in groups(self.ops, MAX_GROUP):
            for part in self._split_runs(group):
                self.loop.call_soon_threadsafe(self._deliver, part)
        self.wire.close()

    def _split_runs(self, group: list[Item]) -> list[Result]:
        """Run *group*; under repeated conflicts, in halves that each commit on their own."""
        result = self._run_group(group, SPLIT_AFTER if len(group) > 1 else MAX_CONFLICTS)
        if result is not None:
            return [result]
        half = len(group) // 2
        return self._split_runs(group[:half]) + self._split_runs(group[half:])

    def _run_group(self, group: list[Item], max_conflicts: int) -> Result | None:
        for attempt in range(max_conflicts):
            try:
                result = self._attempt(group)
            except StoreError as exc:
                return [(future, None, exc) for _, _, future in group], None
            if result is not None:
                return result
            self.conflicts += 1
            backoff = min(CONFLICT_BACKOFF_MAX, CONFLICT_BACKOFF * 2 ** min(attempt, 8))
            time.sleep(random.uniform(0, backoff))
        if len(group) > 1:
            return None
        error = StoreUnavailable("redis: too much contention on the same keys; retry")
        return [(future, None, error) for _, _, future in group], []

    def _attempt(self, group: list[Item]) -> Result | None:
        """One optimistic run of the group: outcomes, or ``None`` when EXEC was refused."""
        now = time.time()
        tx = RedisTx(self.wire.call, self.keys, self.ids, now)
        outcomes: list[Outcome] = []
        names: list[str] = []
        try:
            tx.prefetch([key for _, keys, _ in group for key in keys], now)
            for op, _, future in group:
                tx.begin()
                try:
                    value = op(tx, now)
                except StoreError:
                    raise
                except Exception as exc:  # the operation's own refusal; the others go on
                    tx.drop()
                    outcomes.append((future, None, exc))
                    continue
                tx.keep()
                outcomes.append((future, value, None))
                names.extend(getattr(value, "changed_names", ()))
            commands: list[Command] = [("MULTI",), *tx.commands()]
            if names:
                unique = list(dict.fromkeys(names))
                message = json.dumps([self.node, unique], separators=(",", ":"))
                commands.append(("PUBLISH", self.keys.changes, message))
            commands.append(("EXEC",))
            # An empty transaction still checks the watched keys: refusals and reads made
            # by this group are then known to agree with one committed state.
            replies = self.wire.call(commands)
        except BaseException:
            self.wire.reset()
            raise
        if replies[-1] is None:
            return None
        failed = [r for r in replies[-1] if isinstance(r, ResponseError)]
        if failed:
            # Redis applies the rest of a transaction when one command fails: a bug, loudly.
            log.error("redis refused part of a transaction: %s", failed[0])
            error = StoreError(f"redis refused part of a transaction: {failed[0]}")
            return [(future, None, error) for _, _, future in group], []
        return outcomes, tx.stream_changes()

    def _deliver(self, result: Result) -> None:
        """On the loop: update the caches, wake local readers of what changed, then resolve
        the callers (in that order: a woken reader finds the caches up to date)."""
        outcomes, changes = result
        if changes is None:
            self.on_unknown()
        elif changes:
            self.on_commit(changes)
        resolve(outcomes, self.notifier)

    async def close(self) -> None:
        self.ops.put(None)
        await asyncio.to_thread(self.join)

"""How SQLite work is executed: on the event loop (the default) or on an fsyncing writer thread.

Both engines run writes in *groups*: every operation that is waiting when a transaction starts
joins it, and one commit covers them all. An operation is a function of one connection that
reads, decides and writes (the stream and job rules); it raises to refuse, and then only its own
writes are undone.

- :class:`InlineEngine` (``[store] fsync = false``, the default) runs SQL on the event loop
  thread, in WAL mode with ``synchronous=NORMAL``: a commit is a write into the WAL, which
  survives the process being killed (``kill -9``) but not the machine losing power. Writes made
  during one turn of the loop share a transaction. Checkpoints (the only fsyncs) run on a
  background thread so the loop never waits for the disk.
- :class:`ThreadEngine` (``fsync = true``) commits with ``synchronous=FULL`` on a writer thread,
  so every acknowledged write also survives power loss, at the price of a disk flush per group
  and a thread hand-off per operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from outlast.errors import StoreError, StoreUnavailable
from outlast.store.group_commit import groups, resolve
from outlast.store.notify import Notifier

log = logging.getLogger("outlast.store.sqlite")

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]
Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]
Group = list[tuple[Op, "asyncio.Future[Any]"]]

# Operations that join one transaction at most; bounds the latency a large group adds.
MAX_GROUP = 512
# The inline engine checkpoints the WAL from a background thread this often.
CHECKPOINT_INTERVAL = 1.0
# When another process holds the write lock, the inline engine retries after this long
# (never blocking the event loop on the lock).
BUSY_RETRY = 0.002
BUSY_GIVE_UP = 30.0


def connect(path: str, *, fsync: bool, busy_timeout_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
    conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    return conn


def run_group(conn: sqlite3.Connection, group: Group) -> list[Outcome]:
    """Run *group* in one transaction. Raises sqlite3.OperationalError if the lock is busy."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        outcomes = _run_fast(conn, group)
        if outcomes is None:
            # An operation refused after it may have written: undo all, rerun each op in its
            # own savepoint so that only the refused one's writes are undone.
            conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            outcomes = _run_isolated(conn, group)
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return outcomes


def _run_fast(conn: sqlite3.Connection, group: Group) -> list[Outcome] | None:
    outcomes: list[Outcome] = []
    for op, future in group:
        try:
            outcomes.append((future, op(conn), None))
        except sqlite3.Error:
            raise
        except Exception:
            return None
    return outcomes


def _run_isolated(conn: sqlite3.Connection, group: Group) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for op, future in group:
        conn.execute("SAVEPOINT op")
        try:
            value = op(conn)
        except sqlite3.Error:
            raise
        except Exception as exc:  # the op's own refusal; the others go on
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            outcomes.append((future, None, exc))
        else:
            conn.execute("RELEASE op")
            outcomes.append((future, value, None))
    return outcomes


def deliver(outcomes: list[Outcome], notifier: Notifier) -> None:
    """Wake readers of what changed, then resolve the callers' futures (on the loop thread).

    A result with an ``on_commit()`` method has it called first: the store updates what it
    keeps in memory before any reader is woken.
    """
    for _, value, error in outcomes:
        if error is None:
            on_commit = getattr(value, "on_commit", None)
            if on_commit is not None:
                on_commit()
    resolve(outcomes, notifier)


class InlineEngine:
    def __init__(self, path: str, notifier: Notifier) -> None:
        self.path = path
        self.notifier = notifier
        self.conn = connect(path, fsync=False, busy_timeout_ms=0)
        # Checkpoints happen on our own thread, not inside a commit on the event loop.
        self.conn.execute("PRAGMA wal_autocheckpoint=0")
        self.loop = asyncio.get_running_loop()
        self.pending: list[tuple[Op, asyncio.Future[Any]]] = []
        self.scheduled = False
        self.busy_since: float | None = None
        self._stop = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_forever, name="outlast-sqlite-checkpoint", daemon=True
        )
        self._checkpointer.start()

    async def write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        future: asyncio.Future[T] = self.loop.create_future()
        self.pending.append((op, future))
        if not self.scheduled:
            self.scheduled = True
            # After the callbacks already queued: everything arriving this turn joins the group.
            self.loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self.scheduled = False
        while self.pending:
            group, self.pending = self.pending[:MAX_GROUP], self.pending[MAX_GROUP:]
            try:
                outcomes = run_group(self.conn, group)
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    self._retry_busy(group)
                    return
                outcomes = [(f, None, StoreError(f"sqlite write failed: {exc}")) for _, f in group]
            except sqlite3.Error as exc:
                outcomes = [(f, None, StoreError(f"sqlite write failed: {exc}")) for _, f in group]
            self.busy_since = None
            deliver(outcomes, self.notifier)

    def _retry_busy(self, group: Group) -> None:
        """Another process holds the write lock: try again shortly, without blocking the loop."""
        now = self.loop.time()
        if self.busy_since is None:
            self.busy_since = now
        if now - self.busy_since > BUSY_GIVE_UP:
            self.busy_since = None
            error = StoreUnavailable("the sqlite database stayed locked by another process")
            deliver([(f, None, error) for _, f in group], self.notifier)
            return
        self.pending = group + self.pending
        self.scheduled = True
        self.loop.call_later(BUSY_RETRY, self._flush)

    async def read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        # Reads run between transactions on the loop thread: short, and never blocked by the
        # writer (WAL). Pending writes of this turn are not visible yet, as they are not durable.
        self.conn.execute("BEGIN")
        try:
            return op(self.conn)
        finally:
            self.conn.execute("COMMIT")

    def _checkpoint_forever(self) -> None:
        conn = connect(self.path, fsync=False, busy_timeout_ms=1000)
        try:
            while not self._stop.wait(CHECKPOINT_INTERVAL):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    log.warning("wal checkpoint failed: %s", exc)
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    async def close(self) -> None:
        if self.pending:
            self._flush()  # whatever was submitted is committed before closing
        self._stop.set()
        await asyncio.to_thread(self._checkpointer.join)
        self.conn.close()


class ThreadEngine(threading.Thread):
    """Writes on a writer thread with ``synchronous=FULL``; reads on worker threads."""

    def __init__(self, path: str, notifier: Notifier) -> None:
        super().__init__(name="outlast-sqlite-writer", daemon=True)
        self.path = path
        self.notifier = notifier
        self.loop = asyncio.get_running_loop()
        self.ops: queue.SimpleQueue[tuple[Op, asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.conn = connect(path, fsync=True, busy_timeout_ms=30_000)
        self.start()

    async def write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        future: asyncio.Future[T] = self.loop.create_future()
        self.ops.put((op, future))
        return await future

    async def read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = connect(self.path, fsync=True, busy_timeout_ms=30_000)
                self._local.conn = conn
                with self._lock:
                    self._readers.append(conn)
            conn.execute("BEGIN")
            try:
                return op(conn)
            finally:
                conn.execute("COMMIT")

        return await asyncio.to_thread(run)

    def run(self) -> None:
        for group in groups(self.ops, MAX_GROUP):
            try:
                outcomes = run_group(self.conn, group)
            except sqlite3.Error as exc:
                log.error("sqlite commit failed: %s", exc)
                outcomes = [(f, None, StoreError(f"sqlite write failed: {exc}")) for _, f in group]
            self.loop.call_soon_threadsafe(deliver, outcomes, self.notifier)

    async def close(self) -> None:
        self.ops.put(None)
        await asyncio.to_thread(self.join)
        self.conn.close()
        with self._lock:
            for conn in self._readers:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

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

The WAL stays bounded (:class:`Checkpointer`): a background thread copies it back into the
database, and once it passes :data:`WAL_RESTART_BYTES` makes the next commit write it from its
start again (a RESTART checkpoint, which holds this process's writes for the few milliseconds
the last of the copy takes).
A PASSIVE checkpoint alone never catches up under a steady stream of commits, as every commit
adds frames after the ones it copied. When no commit came for :data:`IDLE_TRUNCATE` seconds,
the WAL file is truncated to zero bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from outlast.errors import StoreError, StoreUnavailable
from outlast.store import versions
from outlast.store.group_commit import groups, resolve
from outlast.store.notify import Notifier

log = logging.getLogger("outlast.store.sqlite")

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]
Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]
Group = list[tuple[Op, "asyncio.Future[Any]"]]

# Operations that join one transaction at most; bounds the latency a large group adds.
MAX_GROUP = 512
# The checkpointer thread looks at the WAL this often (and whenever a writer finds it large).
CHECKPOINT_INTERVAL = 1.0
# Past this size the WAL is checkpointed completely and restarted by the next commit. With the
# writes made while that checkpoint runs, the WAL file stays under WAL_MAX_BYTES (documented in
# docs/operations.md).
WAL_RESTART_BYTES = 16 << 20
WAL_MAX_BYTES = 64 << 20
# When the WAL restarts, its file is truncated to this size (SQLite's journal_size_limit).
JOURNAL_SIZE_LIMIT = 4 << 20
# After this long without a commit (from any process), the WAL file is truncated to zero.
IDLE_TRUNCATE = 2.0
# How long a RESTART or TRUNCATE checkpoint waits for open transactions (holding writes
# meanwhile) before trying later; a long reader (a backup) pins the WAL: retries back off.
CHECKPOINT_WAIT_MS = 200
RESTART_BACKOFF_MAX = 8.0
# When another process holds the write lock, the inline engine retries after this long
# (never blocking the event loop on the lock).
BUSY_RETRY = 0.002
BUSY_GIVE_UP = 30.0
# Opening a file (switching it to WAL, creating or migrating its tables) waits this long for
# another process doing the same, like any write.
OPEN_TIMEOUT = 30.0


def connect(path: str, *, fsync: bool, busy_timeout_ms: int) -> sqlite3.Connection:
    # The busy timeout is set before the first statement: switching a new file to WAL takes an
    # exclusive lock, which another process opening the same file may hold for a moment.
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=OPEN_TIMEOUT
    )
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    except BaseException:
        conn.close()
        raise
    return conn


def prepare(path: str, *, fsync: bool) -> None:
    """Switch the file to WAL and create or migrate its tables (see :mod:`.versions`).

    Another process opening the same file at the same moment holds the lock for a moment: wait
    for it (the busy timeout, then retries) up to :data:`OPEN_TIMEOUT`, as every write does.
    """
    deadline = time.monotonic() + OPEN_TIMEOUT
    delay = BUSY_RETRY
    while True:
        try:
            conn = connect(path, fsync=fsync, busy_timeout_ms=int(OPEN_TIMEOUT * 1000))
            try:
                versions.migrate_sqlite(conn, path)
            finally:
                conn.close()
            return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() + delay > deadline:
                raise StoreError(f"cannot open sqlite store {path}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open sqlite store {path}: {exc}") from exc
        time.sleep(delay)  # on a worker thread: the event loop is not held
        delay = min(delay * 2, 0.25)


def is_busy(exc: sqlite3.Error) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def wal_size(path: str) -> int:
    try:
        return os.stat(path + "-wal").st_size
    except FileNotFoundError:
        return 0


class Checkpointer(threading.Thread):
    """Keeps the WAL bounded, from its own thread and connection (so the event loop never waits
    for the disk flushes a checkpoint makes). ``passive``: also copy the WAL back every interval
    (for a writer connection whose automatic checkpoints are off)."""

    def __init__(self, path: str, *, passive: bool) -> None:
        super().__init__(name="outlast-sqlite-checkpoint", daemon=True)
        self.path = path
        self.passive = passive
        self.wake = threading.Event()
        # Cleared while a RESTART checkpoint runs: this process's writer then starts no
        # transaction, so the checkpoint gets the write lock at once instead of polling for it.
        self.writes_open = threading.Event()
        self.writes_open.set()
        self.stopping = False
        self.restart_after = 0.0
        self.backoff = CHECKPOINT_INTERVAL
        self.data_version: int | None = None
        self.changed_at = time.monotonic()
        self.start()

    def poke_if_large(self) -> None:
        """Called by a writer after a commit: wake the thread when the WAL needs a restart."""
        if wal_size(self.path) > WAL_RESTART_BYTES and not self.wake.is_set():
            self.wake.set()

    def run(self) -> None:
        conn = connect(self.path, fsync=False, busy_timeout_ms=CHECKPOINT_WAIT_MS)
        try:
            while True:
                self.wake.wait(CHECKPOINT_INTERVAL)
                if self.stopping:
                    break
                try:
                    self.step(conn)
                except sqlite3.Error as exc:
                    log.warning("wal checkpoint failed: %s", exc)
                # Pokes made while this step ran saw the WAL before it restarted.
                self.wake.clear()
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    def step(self, conn: sqlite3.Connection) -> None:
        now = time.monotonic()
        # data_version changes whenever another connection (of any process) commits.
        version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        if version != self.data_version:
            self.data_version, self.changed_at = version, now
        size = wal_size(self.path)
        if size > 0 and now - self.changed_at >= IDLE_TRUNCATE:
            # Idle comes first: a WAL restarted by the last checkpoint keeps its file size until
            # the next commit, which may never come.
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        elif size > WAL_RESTART_BYTES and now >= self.restart_after:
            # Copy what can be copied while writers go on, then finish with writers held off
            # and readers out of the WAL, so that the next commit starts it again.
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self.writes_open.clear()
            try:
                busy = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0]
            finally:
                self.writes_open.set()
            if busy:
                log.info("a long read transaction keeps the WAL (%d bytes) from restarting", size)
                self.restart_after = now + self.backoff
                self.backoff = min(self.backoff * 2, RESTART_BACKOFF_MAX)
            else:
                self.backoff = CHECKPOINT_INTERVAL
        elif self.passive:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()
        self.join()


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
        self._busy_retry: asyncio.TimerHandle | None = None
        self.checkpointer = Checkpointer(path, passive=True)

    async def write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        future: asyncio.Future[T] = self.loop.create_future()
        self.pending.append((op, future))
        if not self.scheduled:
            self.scheduled = True
            # After the callbacks already queued: everything arriving this turn joins the group.
            self.loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        if not self.checkpointer.writes_open.is_set():
            self.scheduled = True  # a RESTART checkpoint holds writes for a moment
            self.loop.call_later(BUSY_RETRY, self._flush)
            return
        self.scheduled = False
        while self.pending:
            group, self.pending = self.pending[:MAX_GROUP], self.pending[MAX_GROUP:]
            try:
                outcomes = run_group(self.conn, group)
            except sqlite3.OperationalError as exc:
                if is_busy(exc):
                    self._retry_busy(group)
                    return
                outcomes = [(f, None, StoreError(f"sqlite write failed: {exc}")) for _, f in group]
            except sqlite3.Error as exc:
                outcomes = [(f, None, StoreError(f"sqlite write failed: {exc}")) for _, f in group]
            self.busy_since = None
            self.checkpointer.poke_if_large()
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
        self._busy_retry = self.loop.call_later(BUSY_RETRY, self._flush)

    def lock_released(self) -> None:
        """Another process committed (a sibling said so): a write waiting for the lock tries
        again now rather than at its timer."""
        retry, self._busy_retry = self._busy_retry, None
        if retry is not None and self.busy_since is not None and not retry.cancelled():
            retry.cancel()
            self.loop.call_soon(self._flush)

    async def read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        # Reads run between transactions on the loop thread: short, and never blocked by the
        # writer (WAL). Pending writes of this turn are not visible yet, as they are not durable.
        self.conn.execute("BEGIN")
        try:
            return op(self.conn)
        finally:
            self.conn.execute("COMMIT")

    async def close(self) -> None:
        await asyncio.to_thread(self.checkpointer.stop)  # also reopens writes it was holding
        if self.pending:
            self._flush()  # whatever was submitted is committed before closing
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
        # The writer's own automatic checkpoints copy the WAL back; this thread restarts a WAL
        # that readers kept from restarting, and empties it when idle.
        self.checkpointer = Checkpointer(path, passive=False)
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
            self.checkpointer.writes_open.wait()
            try:
                outcomes = run_group(self.conn, group)
            except sqlite3.Error as exc:
                log.error("sqlite commit failed: %s", exc)
                outcomes = [(f, None, StoreError(f"sqlite write failed: {exc}")) for _, f in group]
            self.loop.call_soon_threadsafe(deliver, outcomes, self.notifier)
            self.checkpointer.poke_if_large()

    async def close(self) -> None:
        self.ops.put(None)
        await asyncio.to_thread(self.join)
        await asyncio.to_thread(self.checkpointer.stop)
        self.conn.close()
        with self._lock:
            for conn in self._readers:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

"""The embedded store: one SQLite file in WAL mode (``sqlite:///path/outlast.db``).

The stream and job rules run inside SQLite transactions executed by an engine (see
:mod:`outlast.store.sqlite_engine`): on the event loop by default, or on an fsyncing writer
thread with ``[store] fsync = true``. Either way an operation's result is returned only after
its transaction committed, so what a client was told survives ``kill -9``.

Live readers in this process are woken right after each commit. The processes of one
``serve --workers N`` tell each other their commits (:class:`~outlast.store.notify.Siblings`);
other processes sharing the file are noticed by a slower re-check
(:data:`~outlast.store.template.RECHECK_INTERVAL`): correctness never depends on a wake-up,
only latency does.

Everything else is :class:`~outlast.store.template.RuleStore`'s: this module supplies the
transaction (:class:`~outlast.store.sqlite_tx.SQLiteTx`), the engine, the schema and the SQL of
the listing queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Generic, Never, TypeVar
from urllib.parse import unquote, urlsplit

from outlast.errors import ConfigError
from outlast.models import JobRecord
from outlast.store import jobs_logic
from outlast.store import streams_logic as logic
from outlast.store.base import AppendResult, AppendSpec, Unit
from outlast.store.jobs_logic import JobTx
from outlast.store.notify import Notifier, Siblings
from outlast.store.recent import RecentUnits
from outlast.store.sqlite_engine import InlineEngine, ThreadEngine, prepare
from outlast.store.sqlite_tx import JOB_COLUMNS, SQLiteTx, job_from_row
from outlast.store.streams_logic import Changed
from outlast.store.template import JobFilter, Rule, RuleStore

T = TypeVar("T")


class _Appended:
    """An append's result as it comes back from the engine. At commit (before readers are
    woken) it records the new unit in the recent-units cache."""

    __slots__ = ("changed_names", "name", "recent", "result", "spec")

    def __init__(
        self,
        recent: RecentUnits,
        name: str,
        spec: AppendSpec,
        result: AppendResult,
        changed_names: tuple[str, ...],
    ) -> None:
        self.recent = recent
        self.name = name
        self.spec = spec
        self.result = result
        self.changed_names = changed_names

    def on_commit(self) -> None:
        self.recent.appended(self.name, self.spec, self.result)


class _Committed(Generic[T]):
    """A rule's result as it comes back from the engine. At commit, before readers are woken,
    the streams it changed leave the recent-units cache: what the cache says of a stream is
    then never older than the store."""

    __slots__ = ("changed", "recent")

    def __init__(self, recent: RecentUnits, changed: Changed[T]) -> None:
        self.recent = recent
        self.changed = changed

    @property
    def changed_names(self) -> tuple[str, ...]:
        return self.changed.changed_names

    def on_commit(self) -> None:
        for name in self.changed.changed_names:
            self.recent.forget(name)


class _UnitsTx(SQLiteTx):
    """A transaction that also keeps the units it inserted, by stream id."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(conn)
        self.inserted: dict[int, list[Unit]] = {}

    def insert_unit(self, stream_id: int, unit: Unit) -> None:
        super().insert_unit(stream_id, unit)
        self.inserted.setdefault(stream_id, []).append(unit)


class _Emitted:
    """An emit's result as it comes back from the engine. At commit (before readers are woken)
    it records the job stream's new units in the recent-units cache, so that the job's live
    readers read them from memory, as readers of an append do."""

    __slots__ = ("changed_names", "changes", "recent")

    def __init__(
        self,
        recent: RecentUnits,
        changes: list[tuple[logic.Row, list[Unit]]],
        changed_names: tuple[str, ...],
    ) -> None:
        self.recent = recent
        self.changes = changes
        self.changed_names = changed_names

    def on_commit(self) -> None:
        for row, units in self.changes:
            self.recent.committed(row.name, row.info(), units)


def _path_from_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise ConfigError(f"not a sqlite URL: {url!r}")
    # sqlite:///relative.db -> "relative.db"; sqlite:////abs/path.db -> "/abs/path.db"
    path = unquote(parts.path)
    if parts.netloc not in ("", "localhost"):
        raise ConfigError(f"sqlite URL must not name a host: {url!r}")
    path = path[1:] if path.startswith("/") else path
    if not path:
        raise ConfigError(f"sqlite URL has no path: {url!r}")
    return path


class SQLiteStore(RuleStore[Never]):
    """The rules run on one connection per engine; reads run on the engine too (between
    transactions, never blocked by the writer in WAL mode)."""

    def __init__(self, path: str, engine: InlineEngine | ThreadEngine, notifier: Notifier) -> None:
        self.path = path
        self.engine = engine
        self.notifier = notifier
        self.recent = RecentUnits()
        self._sweeper: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, *, fsync: bool = False) -> SQLiteStore:
        path = _path_from_url(url)
        parent = Path(path).parent
        if not parent.exists():
            raise ConfigError(f"directory for the sqlite store does not exist: {parent}")
        # The schema, created or brought up to date (store/versions.py).
        await asyncio.to_thread(prepare, path, fsync=fsync)
        notifier = Notifier()
        engine: InlineEngine | ThreadEngine = (
            ThreadEngine(path, notifier) if fsync else InlineEngine(path, notifier)
        )
        store = cls(path, engine, notifier)
        store._sweeper = asyncio.create_task(store._sweep_forever(), name="outlast-sqlite-sweeper")
        return store

    # -- the template's primitives -----------------------------------------------------------

    async def _change(self, rule: Rule[T], prefetch: Sequence[Never] = ()) -> Changed[T]:
        committed = await self.engine.write(
            lambda conn: _Committed(self.recent, rule(SQLiteTx(conn), time.time()))
        )
        return committed.changed

    def _view(self, query: Callable[[JobTx], T]) -> Awaitable[T]:
        return self.engine.read(lambda conn: query(SQLiteTx(conn)))

    # -- streams ----------------------------------------------------------------------------

    async def append(self, name: str, spec: AppendSpec) -> AppendResult:
        # The template's, but the new unit is cached at the commit, before readers wake.
        def op(conn: sqlite3.Connection) -> _Appended:
            changed = logic.append(SQLiteTx(conn), name, spec, time.time())
            return _Appended(self.recent, name, spec, changed.value, changed.changed_names)

        appended = await self.engine.write(op)
        return appended.result

    # -- jobs -------------------------------------------------------------------------------

    async def emit(
        self, job_id: str, owner: str, attempt: int, messages: list[dict[str, Any]]
    ) -> None:
        # The template's, but the new units are cached at the commit, before readers wake: a
        # relay's live readers then read its events from memory instead of the file.
        def op(conn: sqlite3.Connection) -> _Emitted:
            tx = _UnitsTx(conn)
            changed = jobs_logic.emit(tx, job_id, owner, attempt, messages, time.time())
            changes = []
            for stream_id, units in tx.inserted.items():
                row = tx.get_stream_by_id(stream_id)
                if row is not None:
                    changes.append((row, units))
            return _Emitted(self.recent, changes, changed.changed_names)

        await self.engine.write(op)

    async def _find_jobs(self, where: JobFilter, below: str | None, limit: int) -> list[JobRecord]:
        terms, args = [], []
        for column, value in (("state", where.state), ("queue", where.queue), ("task", where.task)):
            if value is not None:
                terms.append(f"{column} = ?")
                args.append(str(value))
        if below is not None:
            terms.append("id < ?")
            args.append(below)
        sql = f"SELECT {JOB_COLUMNS} FROM jobs"
        if terms:
            sql += " WHERE " + " AND ".join(terms)
        sql += " ORDER BY id DESC LIMIT ?"

        def op(conn: sqlite3.Connection) -> list[JobRecord]:
            return [job_from_row(r) for r in conn.execute(sql, (*args, limit)).fetchall()]

        return await self.engine.read(op)

    async def queue_counts(self) -> dict[str, dict[str, int]]:
        def op(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
            counts: dict[str, dict[str, int]] = {}
            for queue_name, state, n in conn.execute("SELECT queue, state, n FROM job_counts"):
                counts.setdefault(queue_name, {})[state] = int(n)
            return counts

        return await self.engine.read(op)

    async def next_due(self, queue: str) -> float | None:
        def op(conn: sqlite3.Connection) -> float | None:
            if SQLiteTx(conn).queue_paused(queue):
                return None  # nothing becomes due until it is resumed
            row = conn.execute(
                "SELECT MIN(run_at) FROM jobs WHERE queue = ? AND state = 'queued'", (queue,)
            ).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self.engine.read(op)

    def share_wakeups(self, siblings: Siblings) -> None:
        """Tell *siblings* this process's commits, and hear theirs."""
        siblings.start(self._changed_elsewhere)
        self.notifier.siblings = siblings

    def _changed_elsewhere(self, names: list[str] | None) -> None:
        if isinstance(self.engine, InlineEngine):
            self.engine.lock_released()
        # What this process cached of those streams is behind now: readers go to the file.
        if names is None:
            self.recent.forget()
            self.notifier.changed_all()
            return
        for name in names:
            self.recent.forget(name)
            self.notifier.wake(name)

    async def close(self) -> None:
        if self.notifier.siblings is not None:
            self.notifier.siblings.close()
            self.notifier.siblings = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.engine.close()

    # -- settings shared by every node ------------------------------------------------------

    async def meta_setdefault(self, key: str, value: str) -> str:
        def op(conn: sqlite3.Connection) -> str:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return str(row[0])

        return await self.engine.write(op)

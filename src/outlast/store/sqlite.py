"""The embedded store: one SQLite file in WAL mode (``sqlite:///path/outlast.db``).

The stream and job rules run inside SQLite transactions executed by an engine (see
:mod:`outlast.store.sqlite_engine`): on the event loop by default, or on an fsyncing writer
thread with ``[store] fsync = true``. Either way an operation's result is returned only after
its transaction committed, so what a client was told survives ``kill -9``.

Live readers in this process are woken right after each commit. Other processes sharing the
file are noticed by a slower re-check (:data:`CROSS_PROCESS_RECHECK`): correctness never depends
on the in-process wake-up, only latency does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from outlast.errors import BadRequest, ConfigError, NotFound, StoreError
from outlast.models import JobRecord, JobState, NewJob
from outlast.store import jobs_logic as jobs
from outlast.store import streams_logic as logic
from outlast.store.base import (
    AppendResult,
    AppendSpec,
    CreateResult,
    CreateSpec,
    JobPage,
    ReadResult,
    Store,
    StreamInfo,
    Unit,
)
from outlast.store.notify import Notifier
from outlast.store.recent import RecentUnits
from outlast.store.sqlite_engine import InlineEngine, ThreadEngine, prepare
from outlast.store.sqlite_tx import JOB_COLUMNS, SQLiteTx, job_from_row

log = logging.getLogger("outlast.store.sqlite")

T = TypeVar("T")

# How often a waiting reader re-checks the file for writes from other processes.
CROSS_PROCESS_RECHECK = 1.0
# Terminal jobs removed per transaction by a retention purge.
PURGE_SLICE = 500
# How often expired streams are swept (reads also check expiry on every access).
SWEEP_INTERVAL = 30.0


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
        result = self.result
        if result.duplicate:
            return
        unit = None
        if self.spec.unit is not None:
            data, count = self.spec.unit
            unit = Unit(result.info.tail - len(data), result.info.tail, count, data)
        self.recent.appended(self.name, result.info, unit)


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


class SQLiteStore(Store):
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
        await asyncio.to_thread(prepare, path, fsync=fsync)
        notifier = Notifier()
        engine: InlineEngine | ThreadEngine = (
            ThreadEngine(path, notifier) if fsync else InlineEngine(path, notifier)
        )
        store = cls(path, engine, notifier)
        store._sweeper = asyncio.create_task(store._sweep_forever(), name="outlast-sqlite-sweeper")
        return store

    # -- plumbing ---------------------------------------------------------------------------

    async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        return await self.engine.write(op)

    async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        return await self.engine.read(op)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await self._write(lambda conn: logic.sweep_expired(SQLiteTx(conn), time.time()))
            except StoreError as exc:
                log.warning("expiry sweep failed: %s", exc)

    # -- the contract -----------------------------------------------------------------------

    async def create_stream(self, name: str, spec: CreateSpec) -> CreateResult:
        changed = await self._write(
            lambda conn: logic.create(SQLiteTx(conn), name, spec, time.time())
        )
        result: CreateResult = changed.value
        if result.created:
            self.recent.forget(name)
        return result

    async def append(self, name: str, spec: AppendSpec) -> AppendResult:
        def op(conn: sqlite3.Connection) -> _Appended:
            changed = logic.append(SQLiteTx(conn), name, spec, time.time())
            return _Appended(self.recent, name, spec, changed.value, changed.changed_names)

        appended = await self._write(op)
        return appended.result

    async def read(self, name: str, position: int, max_bytes: int) -> ReadResult:
        cached = self.recent.read(name, position, max_bytes)
        if cached is not None:
            return cached
        now = time.time()
        result = await self._read(
            lambda conn: logic.read(SQLiteTx(conn), name, position, max_bytes, now)
        )
        if logic.needs_touch(result.info, now):
            # Sliding TTL: an access renews the stream. Not awaited on the read path's behalf.
            await self._write(lambda conn: logic.touch(SQLiteTx(conn), result.info.id, now))
        return result

    async def head(self, name: str) -> StreamInfo:
        now = time.time()
        return await self._read(lambda conn: logic.head(SQLiteTx(conn), name, now))

    async def delete_stream(self, name: str) -> None:
        self.recent.forget(name)
        await self._write(lambda conn: logic.delete(SQLiteTx(conn), name, time.time()))
        self.recent.forget(name)

    async def wait(self, name: str, position: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        # First check: what this process committed last, when it is kept (a commit updates it
        # before waking anyone); after each re-check period: the file, for other processes.
        info = self.recent.info(name)
        while True:
            remaining = deadline - time.monotonic()
            # Register before checking, so that a commit after the check still wakes us.
            waiter = self.notifier.waiter(name, min(max(remaining, 0), CROSS_PROCESS_RECHECK))
            try:
                if info is None:
                    info = await self.head(name)
                if info.tail > position or info.closed:
                    return True
                if remaining <= 0:
                    return False
                if await waiter:
                    return True
            finally:
                waiter.cancel()
            info = None

    # -- jobs -------------------------------------------------------------------------------

    async def _change(self, op: Callable[[SQLiteTx, float], logic.Changed]) -> Any:
        changed = await self._write(lambda conn: op(SQLiteTx(conn), time.time()))
        return changed.value

    async def submit_job(self, new: NewJob, capacity: int) -> jobs.SubmitResult:
        result: jobs.SubmitResult = await self._change(
            lambda tx, now: jobs.submit(tx, new, capacity, now)
        )
        return result

    async def get_job(self, job_id: str) -> JobRecord:
        def op(conn: sqlite3.Connection) -> JobRecord | None:
            return SQLiteTx(conn).get_job(job_id)

        job = await self._read(op)
        if job is None:
            raise NotFound(f"job not found: {job_id}", code="job_not_found")
        return job

    async def list_jobs(
        self,
        *,
        state: JobState | None = None,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        where, args = [], []
        for column, value in (("state", state), ("queue", queue), ("task", task)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(str(value))
        if cursor is not None:
            if not cursor.startswith("job_"):
                raise BadRequest("malformed cursor", code="invalid_cursor")
            where.append("id < ?")
            args.append(cursor)
        sql = f"SELECT {JOB_COLUMNS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"

        def op(conn: sqlite3.Connection) -> list[JobRecord]:
            return [job_from_row(r) for r in conn.execute(sql, (*args, limit + 1)).fetchall()]

        found = await self._read(op)
        page = found[:limit]
        return JobPage(page, page[-1].id if len(found) > limit else None)

    async def claim_jobs(self, queue: str, owner: str, limit: int, lease: float) -> list[JobRecord]:
        claimed: list[JobRecord] = await self._change(
            lambda tx, now: jobs.claim(tx, queue, owner, limit, lease, now)
        )
        return claimed

    async def reserve_jobs(
        self, queue: str, owner: str, limit: int, hold: float
    ) -> list[JobRecord]:
        held: list[JobRecord] = await self._change(
            lambda tx, now: jobs.reserve(tx, queue, owner, limit, hold, now)
        )
        return held

    async def start_job(self, job_id: str, owner: str, lease: float) -> JobRecord:
        job: JobRecord = await self._change(
            lambda tx, now: jobs.start(tx, job_id, owner, lease, now)
        )
        return job

    async def unreserve_jobs(self, owner: str, held: list[tuple[str, float]]) -> int:
        n: int = await self._change(lambda tx, now: jobs.unreserve(tx, owner, held, now))
        return n

    async def renew_leases(
        self, owner: str, job_ids: list[str], lease: float
    ) -> tuple[list[str], list[str]]:
        renewed: tuple[list[str], list[str]] = await self._change(
            lambda tx, now: jobs.renew(tx, owner, job_ids, lease, now)
        )
        return renewed

    async def emit(
        self, job_id: str, owner: str, attempt: int, messages: list[dict[str, Any]]
    ) -> None:
        await self._change(lambda tx, now: jobs.emit(tx, job_id, owner, attempt, messages, now))

    async def finish_job(
        self, job_id: str, owner: str, attempt: int, outcome: jobs.Outcome
    ) -> JobRecord:
        job: JobRecord = await self._change(
            lambda tx, now: jobs.finish(tx, job_id, owner, attempt, outcome, now)
        )
        return job

    async def cancel_job(self, job_id: str) -> JobRecord:
        job: JobRecord = await self._change(lambda tx, now: jobs.cancel(tx, job_id, now))
        return job

    async def recover_expired(self) -> list[JobRecord]:
        recovered: list[JobRecord] = await self._change(jobs.recover_expired)
        return recovered

    async def purge_jobs(self, finished_before: float) -> int:
        total = 0
        while True:  # in slices, so that one purge never holds the writer for long
            n: int = await self._change(
                lambda tx, now: jobs.purge(tx, finished_before, PURGE_SLICE, now)
            )
            total += n
            if n < PURGE_SLICE:
                return total

    async def queue_counts(self) -> dict[str, dict[str, int]]:
        def op(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
            counts: dict[str, dict[str, int]] = {}
            for queue_name, state, n in conn.execute("SELECT queue, state, n FROM job_counts"):
                counts.setdefault(queue_name, {})[state] = int(n)
            return counts

        return await self._read(op)

    async def next_due(self, queue: str) -> float | None:
        def op(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                "SELECT MIN(run_at) FROM jobs WHERE queue = ? AND state = 'queued'", (queue,)
            ).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._read(op)

    def watch_queue(self, queue: str) -> asyncio.Event:
        return self.notifier.event(jobs.queue_key(queue))

    async def close(self) -> None:
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

        return await self._write(op)

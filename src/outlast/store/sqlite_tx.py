"""One SQLite transaction, as the stream and job rules see it (:class:`JobTx`)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any

from outlast.models import JobRecord, JobState
from outlast.store import streams_logic as logic
from outlast.store import webhooks_logic as webhooks
from outlast.store.base import Unit
from outlast.store.jobs_logic import JobTx

JOB_COLUMNS = (
    "id, task, queue, state, input, result, error, attempt, max_attempts, timeout, created_at,"
    " run_at, started_at, finished_at, key, lease_owner, lease_expires, cancel_requested,"
    " callback, priority, concurrency_key, retry_of, turn, waiting, waited"
)
_JSON_FIELDS = frozenset({"input", "result", "error", "callback", "waiting"})


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def job_from_row(row: tuple[Any, ...]) -> JobRecord:
    return JobRecord(
        id=row[0],
        task=row[1],
        queue=row[2],
        state=JobState(row[3]),
        input=json.loads(row[4]),
        result=None if row[5] is None else json.loads(row[5]),
        error=None if row[6] is None else json.loads(row[6]),
        attempt=row[7],
        max_attempts=row[8],
        timeout=row[9],
        created_at=row[10],
        run_at=row[11],
        started_at=row[12],
        finished_at=row[13],
        key=row[14],
        lease_owner=row[15],
        lease_expires=row[16],
        cancel_requested=bool(row[17]),
        callback=None if row[18] is None else json.loads(row[18]),
        priority=row[19],
        concurrency_key=row[20],
        retry_of=row[21],
        turn=row[22],
        waiting=None if row[23] is None else json.loads(row[23]),
        waited=row[24],
    )


class SQLiteTx(JobTx):
    """The stream and job logic's view of one SQLite transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def get_stream(self, name: str) -> logic.Row | None:
        row = self.conn.execute(
            "SELECT id, name, content_type, tail, closed, created_at, touched_at, ttl, expires_at,"
            " last_seq, parent_id, fork_key, deleted, closed_by FROM streams WHERE name = ?",
            (name,),
        ).fetchone()
        return None if row is None else logic.Row(*row)

    def get_stream_by_id(self, stream_id: int) -> logic.Row | None:
        row = self.conn.execute(
            "SELECT id, name, content_type, tail, closed, created_at, touched_at, ttl, expires_at,"
            " last_seq, parent_id, fork_key, deleted, closed_by FROM streams WHERE id = ?",
            (stream_id,),
        ).fetchone()
        return None if row is None else logic.Row(*row)

    def insert_stream(self, row: logic.Row) -> int:
        cur = self.conn.execute(
            "INSERT INTO streams (name, content_type, tail, closed, created_at, touched_at, ttl,"
            " expires_at, last_seq, parent_id, fork_key, deleted, closed_by)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.name,
                row.content_type,
                row.tail,
                int(row.closed),
                row.created_at,
                row.touched_at,
                row.ttl,
                row.expires_at,
                row.last_seq,
                row.parent_id,
                row.fork_key,
                int(row.deleted),
                row.closed_by,
            ),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def update_stream(self, stream_id: int, **fields: Any) -> None:
        cols = ", ".join(f"{key} = ?" for key in fields)
        values = [int(v) if isinstance(v, bool) else v for v in fields.values()]
        self.conn.execute(f"UPDATE streams SET {cols} WHERE id = ?", (*values, stream_id))

    def remove_stream(self, stream_id: int) -> None:
        self.conn.execute("DELETE FROM units WHERE stream_id = ?", (stream_id,))
        self.conn.execute("DELETE FROM producers WHERE stream_id = ?", (stream_id,))
        self.conn.execute("DELETE FROM streams WHERE id = ?", (stream_id,))

    def count_children(self, stream_id: int) -> int:
        row = self.conn.execute(
            "SELECT COUNT(*) FROM streams WHERE parent_id = ?", (stream_id,)
        ).fetchone()
        return int(row[0])

    def insert_unit(self, stream_id: int, unit: Unit) -> None:
        self.conn.execute(
            "INSERT INTO units (stream_id, start, end, count, data) VALUES (?, ?, ?, ?, ?)",
            (stream_id, unit.start, unit.end, unit.count, unit.data),
        )

    def copy_units(self, source_id: int, target_id: int, before: int) -> None:
        self.conn.execute(
            "INSERT INTO units (stream_id, start, end, count, data)"
            " SELECT ?, start, end, count, data FROM units WHERE stream_id = ? AND end <= ?",
            (target_id, source_id, before),
        )

    def unit_at(self, stream_id: int, start: int) -> Unit | None:
        row = self.conn.execute(
            "SELECT start, end, count, data FROM units WHERE stream_id = ? AND start = ?",
            (stream_id, start),
        ).fetchone()
        return None if row is None else Unit(row[0], row[1], row[2], bytes(row[3]))

    def units_from(self, stream_id: int, start: int, max_bytes: int) -> list[Unit]:
        units: list[Unit] = []
        size = 0
        cur = self.conn.execute(
            "SELECT start, end, count, data FROM units WHERE stream_id = ? AND start >= ?"
            " ORDER BY start",
            (stream_id, start),
        )
        for row in cur:
            if units and size + len(row[3]) > max_bytes:
                break
            units.append(Unit(row[0], row[1], row[2], bytes(row[3])))
            size += len(row[3])
        cur.close()
        return units

    def get_producer(self, stream_id: int, producer_id: str) -> tuple[int, int] | None:
        row = self.conn.execute(
            "SELECT epoch, last_seq FROM producers WHERE stream_id = ? AND producer_id = ?",
            (stream_id, producer_id),
        ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def put_producer(self, stream_id: int, producer_id: str, epoch: int, seq: int) -> None:
        self.conn.execute(
            "INSERT INTO producers (stream_id, producer_id, epoch, last_seq) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (stream_id, producer_id) DO UPDATE SET epoch = excluded.epoch,"
            " last_seq = excluded.last_seq",
            (stream_id, producer_id, epoch, seq),
        )

    def expired_ids(self, now: float) -> list[int]:
        rows = self.conn.execute(
            "SELECT id FROM streams WHERE (expires_at IS NOT NULL AND expires_at <= ?)"
            " OR (expires_at IS NULL AND ttl IS NOT NULL AND touched_at + ttl <= ?)",
            (now, now),
        ).fetchall()
        return [int(r[0]) for r in rows]

    # -- jobs -------------------------------------------------------------------------------

    def insert_job(self, job: JobRecord) -> None:
        self.conn.execute(
            f"INSERT INTO jobs ({JOB_COLUMNS}, hook_due) VALUES ({', '.join('?' * 26)})",
            (
                job.id,
                job.task,
                job.queue,
                job.state.value,
                _dumps(job.input),
                None if job.result is None else _dumps(job.result),
                None if job.error is None else _dumps(job.error),
                job.attempt,
                job.max_attempts,
                job.timeout,
                job.created_at,
                job.run_at,
                job.started_at,
                job.finished_at,
                job.key,
                job.lease_owner,
                job.lease_expires,
                int(job.cancel_requested),
                None if job.callback is None else _dumps(job.callback),
                job.priority,
                job.concurrency_key,
                job.retry_of,
                job.turn,
                None if job.waiting is None else _dumps(job.waiting),
                job.waited,
                webhooks.due_at(job.callback),
            ),
        )

    def get_job(self, job_id: str) -> JobRecord | None:
        row = self.conn.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        return None if row is None else job_from_row(row)

    def update_job(self, job_id: str, **fields: Any) -> None:
        if "callback" in fields:  # its event's place in the delivery index goes with it
            fields["hook_due"] = webhooks.due_at(fields["callback"])
        cols = ", ".join(f"{key} = ?" for key in fields)
        values = []
        for key, value in fields.items():
            if key in _JSON_FIELDS:
                value = None if value is None else _dumps(value)
            elif isinstance(value, JobState):
                value = value.value
            elif isinstance(value, bool):
                value = int(value)
            values.append(value)
        self.conn.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*values, job_id))

    def find_job_by_key(self, key: str) -> JobRecord | None:
        row = self.conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE key = ?", (key,)).fetchone()
        return None if row is None else job_from_row(row)

    def count_waiting(self, queue: str) -> int:
        row = self.conn.execute(
            "SELECT n FROM job_counts WHERE queue = ? AND state = 'queued'", (queue,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def move_count(
        self, queue: str, old: JobState | None, new: JobState | None, n: int = 1
    ) -> None:
        rows = [(queue, s.value, d) for s, d in ((old, -n), (new, n)) if s is not None]
        # Both rows in one statement: a transition is one of these per job.
        values = ", ".join("(?, ?, ?)" for _ in rows)
        self.conn.execute(
            f"INSERT INTO job_counts (queue, state, n) VALUES {values}"
            " ON CONFLICT (queue, state) DO UPDATE SET n = n + excluded.n",
            [v for row in rows for v in row],
        )

    def ready(self, queue: str, now: float, keyed: bool, want: int = 0) -> Iterator[JobRecord]:
        # The index holds the order: the claim reads as far as it needs, no sort.
        cur = self.conn.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs INDEXED BY jobs_ready"
            " WHERE queue = ? AND state = 'queued' AND run_at <= ?"
            " ORDER BY priority DESC, turn, id",
            (queue, now),
        )
        try:
            for row in cur:
                yield job_from_row(row)
        finally:
            cur.close()

    def expired_leases(self, now: float) -> list[JobRecord]:
        rows = self.conn.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'running' AND lease_expires <= ?",
            (now,),
        ).fetchall()
        return [job_from_row(r) for r in rows]

    def finished_before(self, ts: float, limit: int) -> list[str]:
        rows = self.conn.execute(
            "SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ? LIMIT ?",
            (ts, limit),
        ).fetchall()
        return [r[0] for r in rows]

    def delete_job(self, job_id: str) -> None:
        self.conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def _queue_flag(self, queue: str, column: str) -> int:
        row = self.conn.execute(
            f"SELECT {column} FROM queue_flags WHERE queue = ?", (queue,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def _set_queue_flag(self, queue: str, column: str, value: int, keep_max: bool = False) -> None:
        update = f"max({column}, excluded.{column})" if keep_max else f"excluded.{column}"
        self.conn.execute(
            f"INSERT INTO queue_flags (queue, {column}) VALUES (?, ?)"
            f" ON CONFLICT (queue) DO UPDATE SET {column} = {update}",
            (queue, value),
        )

    def upstream_state(self, name: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT state FROM upstream_limits WHERE name = ?", (name,)
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def set_upstream_state(self, name: str, state: dict[str, Any]) -> None:
        self.conn.execute(
            "INSERT INTO upstream_limits (name, state) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET state = excluded.state",
            (name, _dumps(state)),
        )

    def queue_paused(self, queue: str) -> bool:
        return bool(self._queue_flag(queue, "paused"))

    def set_queue_paused(self, queue: str, paused: bool) -> None:
        self._set_queue_flag(queue, "paused", int(paused))

    def queue_turn(self, queue: str) -> int:
        return self._queue_flag(queue, "turn")

    def advance_queue_turn(self, queue: str, turn: int) -> None:
        self._set_queue_flag(queue, "turn", turn, keep_max=True)

    def _key_flow(self, queue: str, key: str, column: str) -> int:
        row = self.conn.execute(
            f"SELECT {column} FROM key_flows WHERE queue = ? AND key = ?", (queue, key)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def key_turn(self, queue: str, key: str | None) -> int:
        if key is None:
            return self._queue_flag(queue, "lane")
        return self._key_flow(queue, key, "turn")

    def set_key_turn(self, queue: str, key: str | None, turn: int) -> None:
        if key is None:
            self._set_queue_flag(queue, "lane", turn)
            return
        self.conn.execute(
            "INSERT INTO key_flows (queue, key, turn) VALUES (?, ?, ?)"
            " ON CONFLICT (queue, key) DO UPDATE SET turn = excluded.turn",
            (queue, key, turn),
        )

    def key_running(self, queue: str, key: str) -> int:
        return self._key_flow(queue, key, "running")

    def move_key_running(self, queue: str, key: str, delta: int) -> None:
        self.conn.execute(
            "INSERT INTO key_flows (queue, key, running) VALUES (?, ?, ?)"
            " ON CONFLICT (queue, key) DO UPDATE SET running = running + excluded.running",
            (queue, key, delta),
        )

    def paused_queues(self) -> set[str]:
        rows = self.conn.execute("SELECT queue FROM queue_flags WHERE paused = 1").fetchall()
        return {r[0] for r in rows}

    # -- completion webhooks ----------------------------------------------------------------

    def due_deliveries(self, now: float, limit: int) -> list[JobRecord]:
        rows = self.conn.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE hook_due <= ? ORDER BY hook_due LIMIT ?",
            (now, limit),
        ).fetchall()
        return [job_from_row(r) for r in rows]

    def next_delivery_at(self) -> float | None:
        row = self.conn.execute("SELECT MIN(hook_due) FROM jobs").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def pending_deliveries(self) -> int:
        row = self.conn.execute("SELECT COUNT(*) FROM jobs WHERE hook_due IS NOT NULL").fetchone()
        return int(row[0])

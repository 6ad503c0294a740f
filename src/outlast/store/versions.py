"""Which version of its data layout a store holds, and bringing an older one up to date.

A SQLite store records its schema version in ``PRAGMA user_version``; a Redis store in the key
``<prefix>layout_version``. Opening a store written by an older outlast migrates it, in one
transaction; a store written by a newer outlast is refused with both versions named, since
this code cannot know what the newer one changed (see docs/operations.md, "Upgrades").
"""

from __future__ import annotations

import sqlite3
from importlib import metadata

from outlast.errors import StoreError

# Version 1 is the schema of the releases that did not record a version yet (user_version 0).
SQLITE_SCHEMA_VERSION = 3
# Layout 2: queued jobs that are due wait in ready:<queue> (in start order), delayed ones in
# due:<queue>. A layout 1 store needs no rewrite: claims move its due jobs to ready:<queue>.
# Layout 3: a stream that closes has its units folded into one compressed record (f:<name>,
# redis_data.fold_units). A layout 2 store needs no rewrite: every read takes the units it finds
# one by one and folded, so its streams closed before stay readable as they are. An outlast
# of layout 2 would not see folded units: it refuses to start on a layout 3 store.
# Layout 4: a job that ends is kept as one compressed record (jf:<id>, redis_data.pack_job) in
# place of its hash. A layout 3 store needs no rewrite: a job without a record is read from its
# hash, and its finished jobs become records at their next write (a webhook's delivery). An
# outlast of layout 3 would not see the records: it refuses to start on a layout 4 store.
REDIS_LAYOUT_VERSION = 4


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


# Flow control's tables (schema version 3).
FLOW_TABLES = """
CREATE TABLE queue_flags (
    queue   TEXT PRIMARY KEY,
    paused  INTEGER NOT NULL DEFAULT 0,
    turn    INTEGER NOT NULL DEFAULT 0,
    lane    INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE key_flows (
    queue    TEXT NOT NULL,
    key      TEXT NOT NULL,
    turn     INTEGER NOT NULL DEFAULT 0,
    running  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, key)
) WITHOUT ROWID;
CREATE TABLE upstream_limits (
    name   TEXT PRIMARY KEY,
    state  TEXT NOT NULL
) WITHOUT ROWID;
"""
# queue_flags: per queue, paused or not; the turn of the job started last, and the last turn
# given to a job without a concurrency key. key_flows: per queue and key, the last turn given to
# one of its jobs and how many run. upstream_limits: per named upstream, its limiter's state
# (JSON). See store.jobs_logic.

# The tables of the current version, for a new file.
SQLITE_SCHEMA = (
    """
CREATE TABLE streams (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL UNIQUE,
    content_type  TEXT NOT NULL,
    tail          INTEGER NOT NULL DEFAULT 0,
    closed        INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL,
    touched_at    REAL NOT NULL,
    ttl           INTEGER,
    expires_at    REAL,
    last_seq      TEXT,
    parent_id     INTEGER,
    fork_key      TEXT,
    deleted       INTEGER NOT NULL DEFAULT 0,
    closed_by     TEXT
);
CREATE INDEX streams_parent ON streams(parent_id);
CREATE TABLE units (
    stream_id  INTEGER NOT NULL,
    start      INTEGER NOT NULL,
    end        INTEGER NOT NULL,
    count      INTEGER NOT NULL,
    data       BLOB NOT NULL,
    PRIMARY KEY (stream_id, start)
);
CREATE TABLE jobs (
    id                TEXT PRIMARY KEY,
    task              TEXT NOT NULL,
    queue             TEXT NOT NULL,
    state             TEXT NOT NULL,
    input             TEXT NOT NULL,
    result            TEXT,
    error             TEXT,
    attempt           INTEGER NOT NULL,
    max_attempts      INTEGER NOT NULL,
    timeout           REAL NOT NULL,
    created_at        REAL NOT NULL,
    run_at            REAL NOT NULL,
    started_at        REAL,
    finished_at       REAL,
    key               TEXT UNIQUE,
    lease_owner       TEXT,
    lease_expires     REAL,
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    callback          TEXT,
    hook_due          REAL,
    priority          INTEGER NOT NULL DEFAULT 0,
    concurrency_key   TEXT,
    retry_of          TEXT,
    turn              INTEGER NOT NULL DEFAULT 0,
    waiting           TEXT,
    waited            REAL NOT NULL DEFAULT 0
);
CREATE INDEX jobs_due ON jobs(queue, state, run_at);
CREATE INDEX jobs_ready ON jobs(queue, state, priority DESC, turn, id);
CREATE INDEX jobs_lease ON jobs(state, lease_expires);
CREATE INDEX jobs_finished ON jobs(finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_hook_due ON jobs(hook_due) WHERE hook_due IS NOT NULL;
CREATE TABLE job_counts (
    queue  TEXT NOT NULL,
    state  TEXT NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (queue, state)
) WITHOUT ROWID;
CREATE TABLE producers (
    stream_id    INTEGER NOT NULL,
    producer_id  TEXT NOT NULL,
    epoch        INTEGER NOT NULL,
    last_seq     INTEGER NOT NULL,
    PRIMARY KEY (stream_id, producer_id)
) WITHOUT ROWID;
"""
    + FLOW_TABLES
)

# SQLITE_MIGRATIONS[v]: the statements that take a store from version v to v + 1. Every
# schema change adds one here and raises SQLITE_SCHEMA_VERSION; SQLITE_SCHEMA is then the
# result of all of them, for new files.
SQLITE_MIGRATIONS: dict[int, list[str]] = {
    # 1 -> 2, completion webhooks: a job's callback (JSON) and when its event is next due.
    1: [
        "ALTER TABLE jobs ADD COLUMN callback TEXT",
        "ALTER TABLE jobs ADD COLUMN hook_due REAL",
        "CREATE INDEX jobs_hook_due ON jobs(hook_due) WHERE hook_due IS NOT NULL",
    ],
    # 2 -> 3: flow control (docs/flow-control.md): priorities, turns and per-key counts, paused
    # queues, upstream limits, retries and waits.
    2: [
        "ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN concurrency_key TEXT",
        "ALTER TABLE jobs ADD COLUMN retry_of TEXT",
        "ALTER TABLE jobs ADD COLUMN turn INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN waiting TEXT",
        "ALTER TABLE jobs ADD COLUMN waited REAL NOT NULL DEFAULT 0",
        "CREATE INDEX jobs_ready ON jobs(queue, state, priority DESC, turn, id)",
        *_statements(FLOW_TABLES),
    ],
}


class StoreTooNew(StoreError):
    """The store was written by a newer outlast than this one."""


def sqlite_version(conn: sqlite3.Connection) -> int:
    """The schema version of the open database: 0 for an empty file."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if (
        version == 0
        and conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'"
        ).fetchone()
    ):
        return 1  # written before versions were recorded
    return version


def too_new(what: str, kind: str, found: int, known: int) -> StoreTooNew:
    try:
        release = f"outlast {metadata.version('outlast')}"
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        release = "this outlast"
    return StoreTooNew(
        f"{what} has {kind} version {found}, newer than {release} knows (up to {known}): "
        "run the outlast that wrote it, or a newer one"
    )


def migrate_sqlite(conn: sqlite3.Connection, where: str) -> int:
    """Create or migrate the schema in one write transaction; return the version found.

    ``conn`` is in autocommit mode with a busy timeout: BEGIN IMMEDIATE waits for another
    process that opens or writes the same file at the same moment.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = sqlite_version(conn)
        if found > SQLITE_SCHEMA_VERSION:
            raise too_new(f"the sqlite store {where}", "schema", found, SQLITE_SCHEMA_VERSION)
        if found == 0:
            for statement in _statements(SQLITE_SCHEMA):
                conn.execute(statement)
        else:
            for version in range(found, SQLITE_SCHEMA_VERSION):
                for statement in SQLITE_MIGRATIONS[version]:
                    conn.execute(statement)
        if int(conn.execute("PRAGMA user_version").fetchone()[0]) != SQLITE_SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SQLITE_SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found

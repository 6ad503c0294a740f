"""Stores record the version of their layout; a newer outlast migrates an older store when it
opens it and refuses a store newer than itself (docs/operations.md, "Upgrades")."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from outlast.models import JobState
from outlast.store import open_store, versions
from outlast.store.versions import REDIS_LAYOUT_VERSION, SQLITE_SCHEMA_VERSION, StoreTooNew
from tests.conftest import RedisProcess, free_port

pytestmark = pytest.mark.anyio

# Written by the store of the release before versions were recorded (schema version 1, no
# user_version): tests/store/fixtures/make_v1.py says how, and what it holds.
V1_FIXTURE = Path(__file__).parent / "fixtures" / "v1.db"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def v1_copy(tmp_path: Path) -> Path:
    path = tmp_path / "v1.db"
    shutil.copy(V1_FIXTURE, path)  # the fixture itself stays as that release wrote it
    return path


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


async def test_a_store_of_schema_1_is_migrated_and_its_data_read(v1_copy: Path) -> None:
    assert user_version(v1_copy) == 0
    store = await open_store(f"sqlite:///{v1_copy}")
    try:
        page = await store.list_jobs()
        by_key = {job.key: job for job in page.jobs}
        assert set(by_key) == {"fixture-done", "fixture-queued"}
        done = by_key["fixture-done"]
        assert done.state == JobState.SUCCEEDED and done.result == {"total": 3}
        assert by_key["fixture-queued"].state == JobState.QUEUED
        events = await store.read(f"jobs/{done.id}", 0, 1 << 20)
        messages = json.loads(b"[" + b",".join(u.data for u in events.units) + b"]")
        assert {"type": "progress", "n": 1} in messages
        assert events.up_to_date and events.info.closed
        notes = await store.read("notes", 0, 1 << 20)
        assert b"".join(u.data for u in notes.units) == b"hello world"
        assert (await store.head("events")).closed
        # Still writable: the queued job is claimed as before.
        [claimed] = await store.claim_jobs("default", "w", 1, 30)
        assert claimed.key == "fixture-queued"
    finally:
        await store.close()
    assert user_version(v1_copy) == SQLITE_SCHEMA_VERSION


async def test_migrations_run_from_the_recorded_version(
    v1_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The migration runner, with a made-up version 2 (a column added): it runs once."""
    monkeypatch.setattr(versions, "SQLITE_SCHEMA_VERSION", 2)
    monkeypatch.setattr(versions, "SQLITE_MIGRATIONS", {1: ["ALTER TABLE jobs ADD note TEXT"]})
    for _ in range(2):
        store = await open_store(f"sqlite:///{v1_copy}")
        await store.close()
    assert user_version(v1_copy) == 2
    with sqlite3.connect(v1_copy) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(jobs)")]
    assert columns.count("note") == 1


@pytest.mark.slow  # a real `outlast serve` process
def test_a_sqlite_store_newer_than_this_outlast_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE jobs (id TEXT)")
        conn.execute(f"PRAGMA user_version = {SQLITE_SCHEMA_VERSION + 1}")
    store, port = f"sqlite:///{path}", str(free_port())
    proc = subprocess.run(
        [sys.executable, "-m", "outlast", "serve", "--port", port, "--store", store],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert f"has schema version {SQLITE_SCHEMA_VERSION + 1}" in proc.stderr
    assert f"knows (up to {SQLITE_SCHEMA_VERSION})" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_the_redis_store_records_its_layout_and_refuses_a_newer_one(
    redis_factory: Callable[[], RedisProcess],
) -> None:
    server = redis_factory()
    store = await open_store(server.url)
    await store.close()
    with redis.Redis(port=server.port) as admin:
        assert admin.get("outlast:layout_version") == str(REDIS_LAYOUT_VERSION).encode()
        admin.set("outlast:layout_version", REDIS_LAYOUT_VERSION + 1)
    with pytest.raises(StoreTooNew) as refused:
        await open_store(server.url)
    message = str(refused.value)
    assert f"layout version {REDIS_LAYOUT_VERSION + 1}" in message
    assert f"knows (up to {REDIS_LAYOUT_VERSION})" in message
    # Another prefix is another store, with its own version.
    other = await open_store(server.url + "?prefix=other:")
    await other.close()

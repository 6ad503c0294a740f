"""Where a job writes down when it started: one Redis list per run, in a database of its own.

Every target's ``mark`` task calls :func:`record` (or :func:`arecord`) as its first statement,
with the wall-clock time taken on entry, so that enqueue→start is measured the same way for
outlast and for every peer: ``start - sent``, both read from ``time.time()`` on this machine.
The harness passes the list's location in ``BENCH_MARKS_URL`` and ``BENCH_MARKS_KEY``.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import redis
import redis.asyncio

KEY_ENV = "BENCH_MARKS_KEY"
URL_ENV = "BENCH_MARKS_URL"
BROKER_ENV = "BENCH_REDIS_URL"  # the peers' broker (and outlast-redis's store)

_sync: redis.Redis | None = None
_sync_lock = threading.Lock()
_async: dict[int, Any] = {}  # one asyncio client per event loop (id of the loop)


def _where() -> tuple[str, str]:
    return os.environ[URL_ENV], os.environ.get(KEY_ENV, "marks")


def line(seq: int, sent: float, start: float) -> str:
    return f"{seq} {sent!r} {start!r}"


def record(seq: int, sent: float, start: float) -> None:
    """From a thread or a process: RPUSH one mark (a blocking call)."""
    global _sync
    url, key = _where()
    if _sync is None:
        with _sync_lock:
            if _sync is None:
                _sync = redis.Redis.from_url(url)
    _sync.rpush(key, line(seq, sent, start))


async def arecord(seq: int, sent: float, start: float) -> None:
    """From an event loop: RPUSH one mark without blocking the loop."""
    import asyncio

    url, key = _where()
    loop_id = id(asyncio.get_running_loop())
    client = _async.get(loop_id)
    if client is None:
        client = _async[loop_id] = redis.asyncio.Redis.from_url(url)
    await client.rpush(key, line(seq, sent, start))

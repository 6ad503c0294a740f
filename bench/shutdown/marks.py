"""What each job of the shutdown benchmark writes down: that its body started, and that it finished.

Every target's ``slow`` task is :func:`body` (threads and processes) or :func:`abody` (an event
loop): it counts a start of job ``seq`` in the hash ``<key>:started``, sleeps, then counts a
finish in ``<key>:finished`` (``HINCRBY``, so a job whose body runs twice shows 2). The hashes
live in the run's marks database; the harness passes where in the same variables the jobs
benchmark uses (``bench.jobs.marks``), and reads them with :class:`Marks`.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
from bench.jobs.marks import KEY_ENV, URL_ENV

TASK = "slow"  # the task's name, the same for every target
STARTED, FINISHED = "started", "finished"

_sync: redis.Redis | None = None
_sync_lock = threading.Lock()
_async: dict[int, Any] = {}  # one asyncio client per event loop (id of the loop)


def _key(what: str) -> str:
    return f"{os.environ[KEY_ENV]}:{what}"


def record(seq: int, what: str) -> None:
    global _sync
    if _sync is None:
        with _sync_lock:
            if _sync is None:
                _sync = redis.Redis.from_url(os.environ[URL_ENV])
    _sync.hincrby(_key(what), str(seq), 1)


async def arecord(seq: int, what: str) -> None:
    loop_id = id(asyncio.get_running_loop())
    client = _async.get(loop_id)
    if client is None:
        client = _async[loop_id] = redis.asyncio.Redis.from_url(os.environ[URL_ENV])
    await client.hincrby(_key(what), str(seq), 1)


def body(seq: int, seconds: float) -> None:
    """A job that takes *seconds* (a blocking sleep: a thread or a process is busy)."""
    record(seq, STARTED)
    time.sleep(seconds)
    record(seq, FINISHED)


async def abody(seq: int, seconds: float) -> None:
    """The same on an event loop. Cancelled during the sleep, it never counts a finish."""
    await arecord(seq, STARTED)
    await asyncio.sleep(seconds)
    await arecord(seq, FINISHED)


@dataclass(frozen=True)
class Snapshot:
    started: dict[int, int]  # seq -> times its body started
    finished: dict[int, int]  # seq -> times it finished

    def running(self) -> set[int]:
        return {seq for seq in self.started if self.finished.get(seq, 0) == 0}

    def done(self, seqs: list[int]) -> int:
        return sum(1 for seq in seqs if self.finished.get(seq, 0) > 0)

    def twice(self) -> list[int]:
        return sorted(seq for seq, n in self.started.items() if n > 1)


class Marks:
    """The harness's side: read (and clear) one target's marks."""

    def __init__(self, url: str, key: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.keys = (f"{key}:{STARTED}", f"{key}:{FINISHED}")

    def clear(self) -> None:
        self.client.delete(*self.keys)

    def read(self) -> Snapshot:
        with self.client.pipeline(transaction=False) as pipe:
            for key in self.keys:
                pipe.hgetall(key)
            started, finished = pipe.execute()
        return Snapshot(_counts(started), _counts(finished))

    def close(self) -> None:
        self.client.close()


def _counts(raw: dict[bytes, bytes]) -> dict[int, int]:
    return {int(k): int(v) for k, v in raw.items()}

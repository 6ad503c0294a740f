"""arq's side of the jobs benchmark: ``arq bench.jobs.arq_tasks.WorkerSettings`` (arq's defaults:
``max_jobs=10``, ``poll_delay=0.5``) and ``arq bench.jobs.arq_tasks.FastWorkerSettings``
(the same with ``poll_delay=0.01``)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from arq.connections import RedisSettings
from bench.jobs import marks


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def sleep10(ctx: dict[str, Any]) -> None:
    await asyncio.sleep(0.01)


async def mark(ctx: dict[str, Any], seq: int, sent: float) -> None:
    start = time.time()
    await marks.arecord(seq, sent, start)


def redis_settings() -> RedisSettings:
    return RedisSettings.from_dsn(os.environ.get(marks.BROKER_ENV, "redis://127.0.0.1:6379/0"))


# arq reads a settings class's own __dict__ (not inherited attributes), so each class names
# everything it sets.
FUNCTIONS = (noop, sleep10, mark)


class WorkerSettings:
    functions = FUNCTIONS
    redis_settings = redis_settings()


class FastWorkerSettings:
    functions = FUNCTIONS
    redis_settings = redis_settings()
    poll_delay = 0.01


# A job stays in this sorted set until it has finished: empty = drained.
QUEUE_KEY = "arq:queue"

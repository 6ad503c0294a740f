"""arq's side of the shutdown benchmark: ``arq bench.shutdown.arq_tasks.WorkerSettings`` (arq's
defaults: ``max_jobs=10``, ``poll_delay=0.5``, ``job_timeout=300``, a signal cancels running jobs
and ``retry_jobs`` runs them again) and ``FastWorkerSettings`` (``poll_delay=0.01``)."""

from __future__ import annotations

from typing import Any

from bench.jobs.arq_tasks import redis_settings
from bench.shutdown import marks


async def slow(ctx: dict[str, Any], seq: int, seconds: float) -> None:
    await marks.abody(seq, seconds)


# arq reads a settings class's own __dict__ (not inherited attributes).
class WorkerSettings:
    functions = (slow,)
    redis_settings = redis_settings()


class FastWorkerSettings:
    functions = (slow,)
    redis_settings = redis_settings()
    poll_delay = 0.01

"""Celery's side of the shutdown benchmark: the jobs benchmark's app (Redis broker,
``task_acks_late``, no result backend) with one more task, ``slow``:
``celery -A bench.shutdown.celery_tasks worker --pool threads --concurrency 10``."""

from __future__ import annotations

from bench.jobs.celery_tasks import app
from bench.shutdown import marks

__all__ = ["app", "slow"]


@app.task(name=marks.TASK)  # type: ignore[untyped-decorator]
def slow(seq: int, seconds: float) -> None:
    marks.body(seq, seconds)

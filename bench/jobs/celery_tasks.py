"""Celery's side of the jobs benchmark, Redis broker, thread pool:
``celery -A bench.jobs.celery_tasks worker --pool threads --concurrency 10``.

``task_acks_late`` makes a message stay in kombu's ``unacked`` hash until its task has *run*
(not merely been received), so the harness can tell when the queue is drained without a result
backend. Kombu's Redis transport puts every delivered message in that hash either way; late
acks only move the ack after the task, they add no Redis command.
"""

from __future__ import annotations

import os
import time

from bench.jobs import marks
from celery import Celery  # type: ignore[import-untyped]  # celery ships no type hints

app = Celery("bench", broker=os.environ.get(marks.BROKER_ENV, "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="noop")  # type: ignore[untyped-decorator]
def noop() -> None:
    return None


@app.task(name="sleep10")  # type: ignore[untyped-decorator]
def sleep10() -> None:
    time.sleep(0.01)


@app.task(name="mark")  # type: ignore[untyped-decorator]
def mark(seq: int, sent: float) -> None:
    start = time.time()
    marks.record(seq, sent, start)


QUEUE_KEY = "celery"
UNACKED_KEY = "unacked"

"""RQ's side of the jobs benchmark: ten ``rq worker --worker-class rq.worker.SimpleWorker``
processes (a SimpleWorker runs one job at a time, in its own process: no fork per job)."""

from __future__ import annotations

import time

from bench.jobs import marks


def noop() -> None:
    return None


def sleep10() -> None:
    time.sleep(0.01)


def mark(seq: int, sent: float) -> None:
    start = time.time()
    marks.record(seq, sent, start)


QUEUE_KEY = "rq:queue:default"
FINISHED_KEY = "rq:finished:default"
FAILED_KEY = "rq:failed:default"
WORKERS_KEY = "rq:workers"

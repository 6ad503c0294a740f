"""Dramatiq's side of the jobs benchmark, Redis broker:
``dramatiq bench.jobs.dramatiq_tasks --processes 1 --threads 10``."""

from __future__ import annotations

import os
import time

import dramatiq
from bench.jobs import marks
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(  # type: ignore[no-untyped-call]
    url=os.environ.get(marks.BROKER_ENV, "redis://127.0.0.1:6379/0")
)
dramatiq.set_broker(broker)


# max_retries=0: a failure is counted, not retried (outlast's own retries never fire here either).
@dramatiq.actor(max_retries=0)
def noop() -> None:
    return None


@dramatiq.actor(max_retries=0)
def sleep10() -> None:
    time.sleep(0.01)


@dramatiq.actor(max_retries=0)
def mark(seq: int, sent: float) -> None:
    start = time.time()
    marks.record(seq, sent, start)


# Done when every message was acknowledged: the broker deletes it from this hash on ack.
MESSAGES_KEY = "dramatiq:default.msgs"
QUEUE_KEY = "dramatiq:default"

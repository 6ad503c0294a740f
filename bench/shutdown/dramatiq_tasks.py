"""Dramatiq's side of the shutdown benchmark: the jobs benchmark's broker with one more actor,
``slow`` (Dramatiq's default retries): ``dramatiq bench.shutdown.dramatiq_tasks --processes 1
--threads 10``."""

from __future__ import annotations

import dramatiq
from bench.jobs import dramatiq_tasks
from bench.shutdown import marks

broker = dramatiq_tasks.broker


@dramatiq.actor(actor_name=marks.TASK)
def slow(seq: int, seconds: float) -> None:
    marks.body(seq, seconds)

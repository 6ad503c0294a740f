"""RQ's side of the shutdown benchmark: ``slow``, run by ten ``rq worker --worker-class
rq.worker.SimpleWorker`` processes (RQ finds the function by its import path)."""

from __future__ import annotations

from bench.shutdown import marks


def slow(seq: int, seconds: float) -> None:
    marks.body(seq, seconds)

"""outlast's side of the jobs benchmark: ``outlast serve --app bench.jobs.outlast_tasks:app``.

The same three tasks every peer has: ``noop``, ``sleep10`` (10 ms of asyncio sleep) and ``mark``
(writes its start time down, see :mod:`bench.jobs.marks`).
"""

from __future__ import annotations

import asyncio
import time

from bench.jobs import marks

import outlast

app = outlast.App()


@app.task()
async def noop(job: outlast.Job) -> None:
    return None


@app.task()
async def sleep10(job: outlast.Job) -> None:
    await asyncio.sleep(0.01)


@app.task()
async def mark(job: outlast.Job, seq: int, sent: float) -> None:
    start = time.time()
    await marks.arecord(seq, sent, start)

"""outlast's side of the shutdown benchmark:
``outlast serve --app bench.shutdown.outlast_tasks:app``, with one task, ``slow`` (an ``async``
task with outlast's defaults: 60 s timeout, 3 retries)."""

from __future__ import annotations

from bench.shutdown import marks

import outlast

app = outlast.App()


@app.task()
async def slow(job: outlast.Job, seq: int, seconds: float) -> None:
    await marks.abody(seq, seconds)

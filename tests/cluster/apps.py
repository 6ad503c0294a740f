"""The tasks the cluster tests run on every node (``--app tests.cluster.apps:app``).

Each run of a task appends lines to a file named by the job id in ``OUTLAST_TEST_RUNS``:
``start <node> <attempt> <time>`` and then ``end ...`` (or ``stop ...`` when it was stopped), so
that a test can check afterwards which node ran each job, and that no two runs of one job ever
overlapped. ``OUTLAST_TEST_NODE`` names the node.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import outlast

app = outlast.App()


def record(job: outlast.Job, what: str) -> None:
    node = os.environ.get("OUTLAST_TEST_NODE", "?")
    # One short O_APPEND write per line: lines of concurrent runs never interleave.
    with open(Path(os.environ["OUTLAST_TEST_RUNS"]) / job.id, "a") as fh:
        fh.write(f"{what} {node} {job.attempt} {time.time():.6f}\n")


@app.task(timeout=60, retries=5)
async def step(job: outlast.Job, ms: int, n: int = 0) -> dict[str, Any]:
    """Take *ms* milliseconds, recording where and when it ran."""
    record(job, "start")
    try:
        await asyncio.sleep(ms / 1000)
    except asyncio.CancelledError:
        record(job, "stop")
        raise
    record(job, "end")
    return {"n": n, "node": os.environ.get("OUTLAST_TEST_NODE", "?")}

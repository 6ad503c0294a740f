"""The test tasks, plus one that records which process ran each attempt (``serve --workers``)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import outlast
from tests.jobs.apps import _runs, app

__all__ = ["app"]


def _note(job: outlast.Job, what: str) -> None:
    with open(_runs() / job.id, "a") as fh:
        fh.write(f"{what} {job.attempt} {os.getpid()}\n")


@app.task(timeout=30, retries=3)
async def pid_work(job: outlast.Job, ms: int) -> dict[str, Any]:
    """Sleep for *ms* milliseconds; record "start|end <attempt> <pid>" lines."""
    _note(job, "start")
    await asyncio.sleep(ms / 1000)
    _note(job, "end")
    return {"ms": ms}

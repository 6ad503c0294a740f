"""The task the webhook benchmark runs: it ends at a given wall-clock time, so that a thousand
jobs submitted one by one all end at once."""

from __future__ import annotations

import asyncio
import time

import outlast

app = outlast.App()


@app.task(timeout=120, retries=0)
async def end_at(job: outlast.Job, at: float = 0.0) -> None:
    await asyncio.sleep(max(0.0, at - time.time()))

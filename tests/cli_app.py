"""Tasks for the client and CLI tests, served with ``--app tests.cli_app:app``.

``steps`` lets a test hold a job in the middle of its output: it emits ``n`` outputs, waits for
the file ``gate`` to exist (the test creates it when it is ready), then emits ``n`` more. The
task polls the file because nothing else crosses the process boundary as simply; the test
itself never sleeps.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import outlast

app = outlast.App()

# How often ``steps`` looks for its gate file; short, so a test waits little once it opens it.
GATE_POLL_SECONDS = 0.02


async def _wait_for_file(path: str) -> None:
    # A file is the simplest signal a test process can give a task in the server process;
    # polling it is this task's own business (the test waits on conditions, never on time).
    # (Lint: no asyncio.Event crosses processes; a stat() is too quick to block the loop.)
    while not Path(path).exists():  # noqa: ASYNC110, ASYNC240
        await asyncio.sleep(GATE_POLL_SECONDS)


@app.task(retries=0)
async def echo(job: outlast.Job, **values: Any) -> dict[str, Any]:
    """The input back, as the result."""
    return values


@app.task(retries=0)
async def count(job: outlast.Job, n: int = 3, text: str | None = None) -> dict[str, int]:
    """Emits ``{"i": i}`` ``n`` times (or the words of ``text``), then returns how many."""
    if text is not None:
        for word in text.split():
            await job.emit(word)
        return {"words": len(text.split())}
    for i in range(n):
        await job.emit({"i": i})
    return {"n": n}


@app.task(retries=0)
async def steps(job: outlast.Job, gate: str, n: int = 3) -> dict[str, int]:
    """``n`` outputs, a wait for the gate file, ``n`` more outputs."""
    for i in range(n):
        await job.emit({"step": i, "attempt": job.attempt})
    await _wait_for_file(gate)
    for i in range(n, 2 * n):
        await job.emit({"step": i, "attempt": job.attempt})
    return {"steps": 2 * n}


@app.task(retries=1)
async def fail(job: outlast.Job, message: str = "it broke") -> None:
    """Fails every attempt (two of them)."""
    raise RuntimeError(message)


@app.task(retries=1)
async def fail_once(job: outlast.Job) -> str:
    """Fails its first attempt, succeeds the second."""
    if job.attempt == 1:
        raise RuntimeError("first attempt fails")
    return "second time lucky"


@app.task(retries=0)
async def block(job: outlast.Job, gate: str) -> str:
    """Runs until the gate file exists (or the job is cancelled)."""
    await _wait_for_file(gate)
    return "opened"

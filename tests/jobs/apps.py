"""The tasks the jobs tests run, served with ``--app tests.jobs.apps:app``.

Tasks record what happened to them in a folder named by ``OUTLAST_TEST_RUNS`` (one file per
job id, one line per event: ``start <attempt>``, ``end <attempt>``, ``cancelled <attempt>``), so
that a test can check after the fact how often a task body ran, even across restarts. Tasks that
must wait for the test wait on *gate* files in that folder, never on a clock the test guesses.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import outlast

app = outlast.App()

# How often a task checks for its gate file. This is the task waiting for the test, not the
# test waiting for the server.
GATE_POLL = 0.01


def _runs() -> Path:
    return Path(os.environ["OUTLAST_TEST_RUNS"])


def record(job: outlast.Job, what: str) -> None:
    # One short write with O_APPEND: lines from concurrent attempts never interleave.
    with open(_runs() / job.id, "a") as fh:
        fh.write(f"{what} {job.attempt}\n")


def _gate_open(gate: str) -> bool:
    return (_runs() / f"gate-{gate}").exists()


async def _wait_gate(gate: str) -> None:
    # No asyncio.Event crosses processes: the task polls for the test's file (a stat is quick).
    while not _gate_open(gate):  # noqa: ASYNC110
        await asyncio.sleep(GATE_POLL)


@app.task(timeout=30, retries=0)
async def echo(job: outlast.Job, **value: Any) -> dict[str, Any]:
    return value


@app.task(timeout=30, retries=3)
async def work(job: outlast.Job, ms: int) -> dict[str, Any]:
    """Sleep for *ms* milliseconds, recording the start and the end of each run."""
    record(job, "start")
    try:
        await asyncio.sleep(ms / 1000)
    except asyncio.CancelledError:
        record(job, "cancelled")
        raise
    record(job, "end")
    return {"ms": ms}


@app.task(timeout=30, retries=0)
async def chatty(job: outlast.Job, n: int, gate: str = "") -> dict[str, Any]:
    """Emit ``n`` outputs; after the first, wait for *gate* (if given) before the rest."""
    for i in range(n):
        await job.emit({"i": i})
        if i == 0 and gate:
            await _wait_gate(gate)
    return {"emitted": n}


@app.task(timeout=30, retries=3)
async def flaky(job: outlast.Job, failures: int) -> dict[str, Any]:
    """Fail the first *failures* attempts, then succeed."""
    record(job, "start")
    await job.emit({"attempt": job.attempt})
    if job.attempt <= failures:
        raise RuntimeError(f"attempt {job.attempt} fails on purpose")
    return {"attempt": job.attempt}


@app.task(timeout=30, retries=0)
async def hold(job: outlast.Job, gate: str = "never") -> dict[str, Any]:
    """Run until *gate* opens; record a cancellation if it comes first."""
    record(job, "start")
    try:
        await _wait_gate(gate)
    except asyncio.CancelledError:
        record(job, "cancelled")
        raise
    record(job, "end")
    return {"gate": gate}


@app.task(timeout=30, retries=0)
def hold_sync(job: outlast.Job, gate: str = "never") -> dict[str, Any]:
    """A plain ``def`` task: runs in a thread until *gate* opens or ``job.cancelled``."""
    record(job, "start")
    while not _gate_open(gate):
        if job.cancelled:
            record(job, "cancelled")
            return {"stopped": True}
        time.sleep(GATE_POLL)
    record(job, "end")
    return {"gate": gate}


@app.task(timeout=60, retries=0)
def spin(job: outlast.Job, seconds: float) -> dict[str, Any]:
    """CPU-bound plain ``def``: busy for *seconds* without ever sleeping or yielding."""
    record(job, "start")
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
    record(job, "end")
    return {"loops": n}


@app.task(timeout=30, retries=0)
def sync_emit(job: outlast.Job, n: int) -> dict[str, Any]:
    """A plain ``def`` task that emits from its thread."""
    for i in range(n):
        job.emit({"i": i})
    return {"emitted": n}


@app.task(timeout=30, retries=0)
async def not_json(job: outlast.Job) -> Any:
    return {"set": {1, 2}}


@app.task(timeout=30, retries=0)
async def emit_nan(job: outlast.Job) -> str:
    """Emitting a value that is not JSON fails the attempt; nothing unreadable is stored."""
    await job.emit({"x": float("nan")})
    return "unreachable"


@app.task(timeout=30, retries=0)
async def nan_result(job: outlast.Job) -> float:
    return float("nan")


# An app whose task names a queue the server does not configure: the server refuses to start.
misconfigured = outlast.App()


@misconfigured.task(queue="missing")
async def lost(job: outlast.Job) -> None:
    return None


@app.task(timeout=30, retries=0)
async def child(job: outlast.Job, seconds: float) -> dict[str, Any]:
    """Run a child process that writes its pid to ``pid-<job id>`` and sleeps."""
    import sys

    pid_file = str(_runs() / f"pid-{job.id}")
    script = (
        "import os, sys, time\n"
        "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
        "time.sleep(float(sys.argv[2]))\n"
        "print('slept')"
    )
    record(job, "start")
    try:
        done = await job.run_process(sys.executable, "-c", script, pid_file, str(seconds))
    except asyncio.CancelledError:
        record(job, "cancelled")
        raise
    return {"code": done.returncode, "out": done.stdout.decode().strip()}


@app.task(timeout=30, retries=0)
async def grandchild(job: outlast.Job) -> dict[str, Any]:
    """Run a shell that starts ``sleep`` in the background, writes its pid to
    ``grandchild-<job id>`` and waits for it: the shell's child is the job's grandchild."""
    pid_file = _runs() / f"grandchild-{job.id}"
    script = 'sleep 300 & echo $! > "$1.tmp" && mv "$1.tmp" "$1"; wait'
    record(job, "start")
    try:
        done = await job.run_process("sh", "-c", script, "sh", str(pid_file))
    except asyncio.CancelledError:
        record(job, "cancelled")
        raise
    return {"code": done.returncode}

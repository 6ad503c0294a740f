"""Enqueue the scenario's jobs to one target, or ask its broker how many it still holds.

    python bench/shutdown/enqueue.py '{"op": "slow", "client": "celery", "broker_url": ...}'

The jobs benchmark's load generator (``bench.jobs.loadgen``: one process per call, each peer's
client library imported with its own Redis in the environment, one JSON line out) with two more
operations, on the jobs benchmark's clients (``bench.jobs.clients``) with this benchmark's
``slow`` task added to the peers' tables of tasks:

- ``slow``       ``jobs`` jobs ``slow(seq, seconds)``, one after another; which were accepted.
- ``remaining``  what the broker says is not finished yet (``Client.remaining``): jobs it still
                 holds, queued, running or waiting to be redelivered.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.jobs import loadgen
from bench.jobs.clients import CeleryClient, Client, DramatiqClient, RQClient
from bench.shutdown.marks import TASK

MAX_ERROR_SAMPLES = 5


def add_task(client: Client) -> None:
    """outlast and arq take a task by name; the other peers' clients look it up in a table."""
    if isinstance(client, CeleryClient):
        from bench.shutdown import celery_tasks  # registers `slow` on the same Celery app

        client.tasks[TASK] = celery_tasks.slow
    elif isinstance(client, DramatiqClient):
        from bench.shutdown import dramatiq_tasks

        client.actors[TASK] = dramatiq_tasks.slow
    elif isinstance(client, RQClient):
        from bench.shutdown import rq_tasks

        client.funcs[TASK] = rq_tasks.slow


async def slow(client: Client, spec: dict[str, Any]) -> dict[str, Any]:
    add_task(client)
    accepted: list[int] = []
    errors: list[str] = []
    for seq in range(spec["jobs"]):
        kwargs = {"seq": seq, "seconds": spec["seconds"]}
        try:
            if client.sync:
                client.enqueue_sync(TASK, kwargs)
            else:
                await client.enqueue(TASK, kwargs)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        else:
            accepted.append(seq)
    return {
        "accepted": accepted,
        "errors": len(errors),
        "error_samples": errors[:MAX_ERROR_SAMPLES],
    }


async def remaining(client: Client, spec: dict[str, Any]) -> dict[str, Any]:
    return {"remaining": await client.remaining(spec["expected"])}


loadgen.OPS.update(slow=slow, remaining=remaining)

if __name__ == "__main__":
    loadgen.main(sys.argv)

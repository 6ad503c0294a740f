"""A cancel that reaches a job between its launch and the first step of its task (the API saw it
running and told the worker at once) must still stop it: it was lost once, and the job ran on,
`running` for good, holding its slot. In-process, on the SQLite store: the race is made certain
by cancelling in the same event-loop step as the launch."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from outlast.config import Settings
from outlast.executors.registry import Registry, TaskSpec
from outlast.metrics import Metrics
from outlast.models import JobState, NewJob
from outlast.store import open_store
from outlast.tasks import Job
from outlast.worker import Worker


async def _forever(job: Job, value: Any) -> Any:
    await asyncio.Event().wait()


async def _valid(value: Any) -> None:
    return None


def test_a_cancel_before_the_task_first_runs_stops_the_job(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await open_store(f"sqlite:///{tmp_path}/race.db")
        settings = Settings()
        registry = Registry({"forever": TaskSpec("forever", "default", 60, 0, _forever, _valid)})
        worker = Worker(settings, store, registry, Metrics(), owner="race-worker")
        try:
            new = NewJob(task="forever", queue="default", input={}, max_attempts=1, timeout=60)
            job = (await store.submit_job(new, capacity=10)).job
            [claimed] = await store.claim_jobs("default", "race-worker", 1, 30)
            assert (await store.cancel_job(job.id)).state == JobState.RUNNING
            worker.runners["default"]._start(claimed, reserved=False)  # as its claim loop does
            assert worker.cancel_local(job.id)  # same step: the task has not run yet
            task = worker.running[job.id].task
            assert task is not None
            # The job's task ends (its outcome written) instead of running on forever.
            await asyncio.wait_for(task, timeout=10)
            assert (await store.get_job(job.id)).state == JobState.CANCELLED
            assert not worker.running
            assert worker.runners["default"].active == 0
        finally:
            await worker.drain(0)
            await store.close()

    asyncio.run(scenario())

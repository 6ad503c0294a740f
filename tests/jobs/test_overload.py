"""Overload is refused, never a crash: a full queue answers ``429`` with ``Retry-After``, and
admission is atomic under concurrent submits (capacity is never overshot)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.jobs.helpers import finished, in_state, metric, open_gate, submit

pytestmark = pytest.mark.slow

CAPACITY = 20
SUBMITS = 200


def _tiny_queue_server(factory: Callable[..., ServerProcess]) -> ServerProcess:
    return factory(
        env={
            "OUTLAST_QUEUES__DEFAULT__CONCURRENCY": "8",
            "OUTLAST_QUEUES__TINY__CONCURRENCY": "1",
            "OUTLAST_QUEUES__TINY__CAPACITY": str(CAPACITY),
        }
    ).start()


async def _burst(url: str, n: int, body: dict[str, object]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return await asyncio.gather(*(client.post(f"{url}/v1/jobs", json=body) for _ in range(n)))


def test_a_full_queue_answers_429_and_never_overshoots(
    jobs_server_factory: Callable[..., ServerProcess], runs: Path
) -> None:
    server = _tiny_queue_server(jobs_server_factory)
    # One job holds the queue's only worker, so every job admitted after it waits.
    blocker = submit(server, "hold", input={"gate": "free"}, queue="tiny")

    def waiting() -> int:
        queues = httpx.get(f"{server.url}/v1/queues").json()["queues"]
        return int(next(q for q in queues if q["name"] == "tiny")["queued"])

    in_state(server, blocker["id"], "running")

    answers = asyncio.run(_burst(server.url, SUBMITS, {"task": "echo", "queue": "tiny"}))
    statuses = Counter(r.status_code for r in answers)
    assert statuses == {202: CAPACITY, 429: SUBMITS - CAPACITY}, statuses
    for resp in answers:
        if resp.status_code != 429:
            continue
        assert int(resp.headers["Retry-After"]) >= 1
        error = resp.json()["error"]
        assert error["code"] == "queue_full"
        assert "tiny" in error["message"]
        assert error["retry_after"] == int(resp.headers["Retry-After"])
    assert waiting() == CAPACITY
    assert metric(server, "outlast_jobs_rejected_total", queue="tiny", reason="queue_full") == (
        SUBMITS - CAPACITY
    )
    # Another burst while still full: every one refused, the count unchanged.
    again = asyncio.run(_burst(server.url, 50, {"task": "echo", "queue": "tiny"}))
    assert Counter(r.status_code for r in again) == {429: 50}
    assert waiting() == CAPACITY
    # Other queues are not affected.
    assert submit(server, "echo", input={})["queue"] == "default"

    # Once the queue drains, submissions are accepted again and everything admitted finishes.
    open_gate(runs, "free")
    accepted = [r.json()["id"] for r in answers if r.status_code == 202]
    for job_id in [blocker["id"], *accepted]:
        assert finished(server, job_id)["state"] == "succeeded"
    assert waiting() == 0
    later = submit(server, "echo", input={}, queue="tiny")
    assert finished(server, later["id"])["state"] == "succeeded"


def test_delayed_and_retrying_jobs_count_as_waiting(
    jobs_server_factory: Callable[..., ServerProcess],
) -> None:
    server = _tiny_queue_server(jobs_server_factory)
    for _ in range(CAPACITY):
        submit(server, "echo", input={}, queue="tiny", delay=3600)
    resp = httpx.post(f"{server.url}/v1/jobs", json={"task": "echo", "queue": "tiny"})
    assert resp.status_code == 429
    # Cancelling one frees a place.
    queued = httpx.get(f"{server.url}/v1/jobs", params={"queue": "tiny", "limit": 1}).json()
    httpx.post(f"{server.url}/v1/jobs/{queued['jobs'][0]['id']}/cancel")
    resp = httpx.post(f"{server.url}/v1/jobs", json={"task": "echo", "queue": "tiny"})
    assert resp.status_code == 202

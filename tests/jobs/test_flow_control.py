"""Flow control (docs/flow-control.md): paused queues and retries of finished jobs, on the store
contract (every backend) and through the API."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from outlast.errors import Conflict, NotFound
from outlast.models import JobState, NewJob
from outlast.store import Store
from outlast.store.base import Outcome
from tests.conftest import InProcessServer, ServerProcess, wait_for
from tests.jobs import test_store_contract as contract
from tests.jobs.helpers import finished, get_job, submit

LEASE = 30.0
# The store contract's fixtures: a fresh store of each backend.
anyio_backend = contract.anyio_backend
store = contract.store
JSON = "application/json"


def new(task: str = "t", *, queue: str = "q", **fields: object) -> NewJob:
    return NewJob(task=task, queue=queue, input={"n": 1}, max_attempts=2, timeout=10.0, **fields)  # type: ignore[arg-type]


# -- the store contract ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_paused_queue_admits_but_no_claim_or_reservation_takes_its_jobs(
    store: Store,
) -> None:
    await store.pause_queue("q", True)
    assert await store.paused_queues() == {"q"}
    job = (await store.submit_job(new(), capacity=10)).job
    other = (await store.submit_job(new(queue="r"), capacity=10)).job
    assert await store.claim_jobs("q", "w1", 10, LEASE) == []
    assert await store.reserve_jobs("q", "w1", 10, 5.0) == []
    assert await store.next_due("q") is None  # an idle worker does not spin on it
    assert [j.id for j in await store.claim_jobs("r", "w1", 10, LEASE)] == [other.id]
    # Pausing twice is pausing; resuming lets the job go.
    await store.pause_queue("q", True)
    await store.pause_queue("q", False)
    assert await store.paused_queues() == set()
    assert await store.next_due("q") is not None
    assert [j.id for j in await store.claim_jobs("q", "w1", 10, LEASE)] == [job.id]


@pytest.mark.anyio
async def test_a_running_job_of_a_paused_queue_finishes(store: Store) -> None:
    job = (await store.submit_job(new(), capacity=10)).job
    [running] = await store.claim_jobs("q", "w1", 1, LEASE)
    await store.pause_queue("q", True)
    done = await store.finish_job(job.id, "w1", running.attempt, Outcome("succeeded", 1))
    assert done.state == JobState.SUCCEEDED


@pytest.mark.anyio
async def test_retry_makes_a_new_job_of_a_failed_or_cancelled_one(store: Store) -> None:
    first = (await store.submit_job(new(priority=5, concurrency_key="u1"), capacity=10)).job
    with pytest.raises(Conflict):
        await store.retry_job(first.id, capacity=10)  # queued: nothing to retry
    await store.cancel_job(first.id)
    again = (await store.retry_job(first.id, capacity=10)).job
    assert again.id != first.id and again.retry_of == first.id
    assert (again.task, again.queue, again.input) == (first.task, first.queue, first.input)
    assert (again.max_attempts, again.timeout) == (first.max_attempts, first.timeout)
    assert (again.priority, again.concurrency_key) == (5, "u1")
    assert again.state == JobState.QUEUED and again.attempt == 0
    assert (await store.get_job(again.id)).retry_of == first.id
    assert (await store.get_job(first.id)).state == JobState.CANCELLED  # left as it was
    [running] = await store.claim_jobs("q", "w1", 1, LEASE)
    error = {"code": "exception", "message": "boom"}
    await store.finish_job(again.id, "w1", running.attempt, Outcome("failed", error=error))
    third = (await store.retry_job(again.id, capacity=10)).job
    assert third.retry_of == again.id
    with pytest.raises(NotFound):
        await store.retry_job("job_" + "0" * 32, capacity=10)


# -- the API --------------------------------------------------------------------------------


@pytest.fixture
def inproc(inproc_factory: Callable[..., InProcessServer]) -> InProcessServer:
    """The test tasks, no workers: what is submitted stays queued."""
    return inproc_factory(app="tests.jobs.apps:app")


ECHO = {"task": "echo", "input": {"a": 1}}


def test_pause_and_resume_answer_with_the_queue_and_404_for_an_unknown_one(
    inproc: InProcessServer,
) -> None:
    client = inproc.client
    paused = client.post("/v1/queues/default/pause")
    assert paused.status_code == 200, paused.text
    assert paused.json()["name"] == "default" and paused.json()["paused"] is True
    listed = {q["name"]: q for q in client.get("/v1/queues").json()["queues"]}
    assert listed["default"] == paused.json()
    assert client.post("/v1/jobs", json=ECHO).status_code == 202  # still admitted
    resumed = client.post("/v1/queues/default/resume")
    assert resumed.status_code == 200 and resumed.json()["paused"] is False
    for action in ("pause", "resume"):
        missing = client.post(f"/v1/queues/nope/{action}")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "queue_not_found"


def test_retry_of_a_job_that_is_not_failed_or_cancelled_is_409(inproc: InProcessServer) -> None:
    client = inproc.client
    job = client.post("/v1/jobs", json=ECHO).json()
    refused = client.post(f"/v1/jobs/{job['id']}/retry")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "invalid_state"
    cancelled = client.post(f"/v1/jobs/{job['id']}/cancel").json()
    assert cancelled["state"] == "cancelled"
    again = client.post(f"/v1/jobs/{job['id']}/retry")
    assert again.status_code == 202, again.text
    body = again.json()
    assert body["retry_of"] == job["id"] and body["id"] != job["id"]
    assert body["input"] == job["input"] and body["state"] == "queued"
    assert again.headers["Location"] == f"/v1/jobs/{body['id']}"
    assert client.post("/v1/jobs/job_" + "0" * 32 + "/retry").status_code == 404


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("priority", 101),
        ("priority", -101),
        ("priority", 1.5),
        ("priority", "high"),
        ("priority", True),
        ("concurrency_key", ""),
        ("concurrency_key", "é" * 101),
        ("concurrency_key", 7),
        ("concurrency_key", "\ud800"),
    ],
)
def test_bad_priority_or_concurrency_key_is_422_naming_the_field(
    inproc: InProcessServer, field: str, value: object
) -> None:
    # As JSON text with escapes: a lone surrogate cannot be encoded as UTF-8, but JSON can say it.
    body = json.dumps({**ECHO, field: value})
    resp = inproc.client.post("/v1/jobs", content=body, headers={"Content-Type": JSON})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["field"] == field


def test_priority_and_concurrency_key_are_shown_on_the_job(inproc: InProcessServer) -> None:
    body = {**ECHO, "priority": -3, "concurrency_key": "é" * 100}
    job = inproc.client.post("/v1/jobs", json=body).json()
    assert (job["priority"], job["concurrency_key"]) == (-3, "é" * 100)
    plain = inproc.client.post("/v1/jobs", json=ECHO).json()
    assert (plain["priority"], plain["concurrency_key"]) == (0, None)
    assert "retry_of" not in plain


# -- across a restart -----------------------------------------------------------------------


def test_a_paused_queue_answers_202_and_starts_nothing_across_a_restart(
    jobs_server_factory: Callable[..., ServerProcess], runs: Path
) -> None:
    env = {"OUTLAST_QUEUES__OTHER__CONCURRENCY": "1"}
    server = jobs_server_factory(env=env).start()
    assert httpx.post(f"{server.url}/v1/queues/default/pause", timeout=10).json()["paused"]
    waiting = submit(server, "echo", input={"a": 1})
    # A job of another queue runs meanwhile: the worker claims, just not from the paused queue.
    witness = submit(server, "echo", input={"b": 1}, queue="other")
    assert finished(server, witness["id"])["state"] == "succeeded"
    assert get_job(server, waiting["id"])["state"] == "queued"

    server.signal(signal.SIGTERM)
    assert server.wait_exit(timeout=60) == 0
    server.start()
    queues = {q["name"]: q for q in httpx.get(f"{server.url}/v1/queues").json()["queues"]}
    assert queues["default"]["paused"] is True and queues["default"]["queued"] == 1
    witness = submit(server, "echo", input={"c": 1}, queue="other")
    assert finished(server, witness["id"])["state"] == "succeeded"
    assert get_job(server, waiting["id"])["state"] == "queued"

    resumed = httpx.post(f"{server.url}/v1/queues/default/resume", timeout=10).json()
    assert resumed["paused"] is False
    assert finished(server, waiting["id"])["state"] == "succeeded"
    wait_for(
        lambda: httpx.get(f"{server.url}/v1/queues").json()["queues"][0]["succeeded"] == 1,
        timeout=10,
    )

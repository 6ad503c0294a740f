"""Flow control (docs/flow-control.md): paused queues and retries of finished jobs, on the store
contract (every backend) and through the API."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from outlast.errors import Conflict, NotFound
from outlast.models import JobState, NewJob
from outlast.store import Store
from outlast.store.base import Outcome, UpstreamLimits
from tests.conftest import InProcessServer, ServerProcess, wait_for
from tests.jobs import test_store_contract as contract
from tests.jobs.helpers import finished, get_job, submit
from tests.tiers import backend_params

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
    ],
)
def test_bad_priority_or_concurrency_key_is_422_naming_the_field(
    inproc: InProcessServer, field: str, value: object
) -> None:
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


# -- fair order: priorities, turns and per-key limits ----------------------------------------


async def _drain(store: Store, queue: str, slots: int, per_key: int) -> list[str]:
    """Run every job of *queue* like one worker with *slots* slots would, ending the oldest
    running job first; returns the events in order (``start <id>``, ``end <id>``) and checks
    that no key ever runs more than *per_key* jobs."""
    events: list[str] = []
    running: list[tuple[str, int, str | None]] = []
    while True:
        claimed = await store.claim_jobs(queue, "w", slots - len(running), LEASE, per_key)
        for job in claimed:
            events.append(f"start {job.id}")
            running.append((job.id, job.attempt, job.concurrency_key))
        keys = [key for _, _, key in running if key is not None]
        assert all(keys.count(key) <= per_key for key in keys)
        if not running:
            return events
        job_id, attempt, _ = running.pop(0)
        await store.finish_job(job_id, "w", attempt, Outcome("succeeded", None))
        events.append(f"end {job_id}")


@pytest.mark.anyio
async def test_keys_are_served_in_turn_and_never_beyond_their_limit(store: Store) -> None:
    tenants: dict[str, list[str]] = {"a": [], "b": [], "c": []}
    for tenant, count in (("a", 100), ("b", 5), ("c", 5)):
        for _ in range(count):
            job = (await store.submit_job(new(concurrency_key=tenant), capacity=1000)).job
            tenants[tenant].append(job.id)
    events = await _drain(store, "q", slots=2, per_key=1)
    tenth_of_a = events.index(f"start {tenants['a'][9]}")
    for job_id in tenants["b"] + tenants["c"]:
        assert events.index(f"end {job_id}") < tenth_of_a
    # Within a key: first come, first served.
    starts = [e.split()[1] for e in events if e.startswith("start")]
    for ids in tenants.values():
        assert [i for i in starts if i in ids] == ids


@pytest.mark.anyio
async def test_a_higher_priority_starts_first_and_each_priority_is_fifo(store: Store) -> None:
    low = [(await store.submit_job(new(), capacity=100)).job.id for _ in range(50)]
    urgent = (await store.submit_job(new(priority=10), capacity=100)).job.id
    later = (await store.submit_job(new(priority=-5), capacity=100)).job.id
    events = await _drain(store, "q", slots=1, per_key=0)
    starts = [e.split()[1] for e in events if e.startswith("start")]
    assert starts == [urgent, *low, later]


@pytest.mark.anyio
async def test_a_delayed_job_is_claimed_once_due_in_its_priority_place(store: Store) -> None:
    # The delay must outlast three submits and a claim on a loaded machine (50 ms did not,
    # once, on Redis): the first claim has to come before the delayed job is due.
    delayed = (await store.submit_job(new(delay=0.5, priority=1), capacity=100)).job.id
    first = (await store.submit_job(new(), capacity=100)).job.id
    second = (await store.submit_job(new(), capacity=100)).job.id
    [claimed] = await store.claim_jobs("q", "w", 1, LEASE)
    assert claimed.id == first  # the delayed one is not due yet
    run_at = (await store.get_job(delayed)).run_at
    deadline = time.monotonic() + 10  # a guard: the job is due within 0.5 s
    while time.time() <= run_at:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    # Due now: its priority puts it before the job that waited longer.
    assert [j.id for j in await store.claim_jobs("q", "w", 1, LEASE)] == [delayed]
    assert [j.id for j in await store.claim_jobs("q", "w", 1, LEASE)] == [second]


def _order(runs: Path) -> list[str]:
    path = runs / "order"
    return path.read_text().splitlines() if path.exists() else []


def _check_fair(events: list[str], per_key: int, settled: str = "end") -> None:
    """Tenant b's and c's jobs all reach *settled* (``end``, or ``start``) before a's 10th
    starts; no key runs beyond its limit."""
    running: dict[str, int] = {}
    a_started = 0
    b_and_c_settled = 0
    for event in events:
        what, tag = event.split()
        tenant = tag.split("-")[0]
        running[tenant] = running.get(tenant, 0) + (1 if what == "start" else -1)
        assert running[tenant] <= per_key, events
        if what == "start" and tenant == "a":
            a_started += 1
            if a_started == 10:
                assert b_and_c_settled == 10, events
        if what == settled and tenant in ("b", "c"):
            b_and_c_settled += 1


def _submit_tenants(server: ServerProcess) -> list[str]:
    ids = []
    for tenant, count in (("a", 100), ("b", 5), ("c", 5)):
        for n in range(count):
            body = {"tag": f"{tenant}-{n}", "ms": 10}
            ids.append(submit(server, "ordered", input=body, concurrency_key=tenant)["id"])
    return ids


FAIR_ENV = {
    "OUTLAST_QUEUES__DEFAULT__CONCURRENCY": "2",
    "OUTLAST_QUEUES__DEFAULT__PER_KEY_CONCURRENCY": "1",
}


@pytest.mark.parametrize("backend", backend_params("sqlite"), indirect=True)
def test_a_tenant_with_many_jobs_does_not_hold_back_the_others(
    jobs_server_factory: Callable[..., ServerProcess], runs: Path
) -> None:
    server = jobs_server_factory(env=FAIR_ENV).start()
    # Paused while submitting, so that every job waits when the first one may start.
    httpx.post(f"{server.url}/v1/queues/default/pause", timeout=10)
    ids = _submit_tenants(server)
    httpx.post(f"{server.url}/v1/queues/default/resume", timeout=10)
    for job_id in ids:
        assert finished(server, job_id)["state"] == "succeeded"
    _check_fair(_order(runs), per_key=1)


@pytest.mark.parametrize("backend", backend_params("redis"), indirect=True)
def test_tenants_are_served_in_turn_by_two_nodes_sharing_redis(
    jobs_server_factory: Callable[..., ServerProcess], runs: Path
) -> None:
    first = jobs_server_factory(env=FAIR_ENV).start()
    second = jobs_server_factory(env=FAIR_ENV, store=first.store).start()
    httpx.post(f"{first.url}/v1/queues/default/pause", timeout=10)
    ids = _submit_tenants(first)
    httpx.post(f"{second.url}/v1/queues/default/resume", timeout=10)
    for job_id in ids:
        assert finished(second, job_id)["state"] == "succeeded"
    # The turns decide when each job starts. When one ends on the other node depends on how
    # that process is scheduled (a loaded machine stalled one past a's 10th start), so the
    # two-node check is on starts.
    _check_fair(_order(runs), per_key=1, settled="start")


def test_with_the_queue_busy_a_higher_priority_job_submitted_last_starts_first(
    jobs_server_factory: Callable[..., ServerProcess], runs: Path
) -> None:
    server = jobs_server_factory(env={"OUTLAST_QUEUES__DEFAULT__CONCURRENCY": "1"}).start()
    busy = submit(server, "ordered", input={"tag": "busy", "gate": "go"})
    wait_for(lambda: get_job(server, busy["id"])["state"] == "running")
    low = [submit(server, "ordered", input={"tag": f"low-{n}"})["id"] for n in range(50)]
    urgent = submit(server, "ordered", input={"tag": "urgent"}, priority=10)["id"]
    (runs / "gate-go").touch()
    for job_id in [*low, urgent]:
        assert finished(server, job_id)["state"] == "succeeded"
    starts = [e.split()[1] for e in _order(runs) if e.startswith("start")]
    assert starts == ["busy", "urgent", *(f"low-{n}" for n in range(50))]


@pytest.mark.anyio
async def test_upstream_limits_are_taken_and_given_back_in_the_store(store: Store) -> None:
    two = UpstreamLimits(max_concurrency=2)
    assert await store.acquire_upstream("llm", "j1", two, 60) is None
    assert await store.acquire_upstream("llm", "j2", two, 60) is None
    refused = await store.acquire_upstream("llm", "j3", two, 60)
    assert refused is not None and refused[1] == "upstream_concurrency"
    assert refused[0] > time.time()
    await store.release_upstream("llm", "j1", 0)
    assert await store.acquire_upstream("llm", "j3", two, 60) is None
    # A hold that ends (its worker vanished) gives its turn back.
    assert await store.acquire_upstream("other", "gone", UpstreamLimits(1), 0) is None
    assert await store.acquire_upstream("other", "next", UpstreamLimits(1), 60) is None
    # rpm: the next request waits its turn.
    once = UpstreamLimits(rpm=1)
    assert await store.acquire_upstream("slow", "a", once, 60) is None
    waits = await store.acquire_upstream("slow", "b", once, 60)
    assert waits is not None and waits[1] == "upstream_rate_limited"
    assert waits[0] >= time.time() + 59
    # tpm: reported usage empties the bucket.
    tokens = UpstreamLimits(tpm=100)
    assert await store.acquire_upstream("tok", "a", tokens, 60) is None
    await store.release_upstream("tok", "a", 150)
    empty = await store.acquire_upstream("tok", "b", tokens, 60)
    assert empty is not None and empty[1] == "upstream_rate_limited"

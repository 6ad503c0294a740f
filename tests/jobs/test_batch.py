"""Batch submit (``POST /v1/jobs/batch``, docs/jobs.md): one request, one commit, each job
admitted or refused on its own and in order. The app runs in this process (``inproc``) with no
workers, so admitted jobs stay queued and capacities are exact."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from outlast.api.jobs import MAX_BATCH
from tests.conftest import InProcessServer
from tests.fakes.receiver import hook_env
from tests.jobs.conftest import APP

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def small_queue(inproc_factory: Callable[..., InProcessServer]) -> InProcessServer:
    """The test tasks, no workers, and a default queue that holds 3 waiting jobs."""
    return inproc_factory(app=APP, env={"OUTLAST_QUEUES__DEFAULT__CAPACITY": "3"})


def _batch(server: InProcessServer, jobs: Any) -> httpx.Response:
    return server.client.post("/v1/jobs/batch", json={"jobs": jobs})


def _answers(resp: httpx.Response) -> list[dict[str, Any]]:
    assert resp.status_code == 200, resp.text
    answers: list[dict[str, Any]] = resp.json()["jobs"]
    return answers


def test_each_job_gets_its_own_status_in_order(small_queue: InProcessServer) -> None:
    # Capacity 3: one job waits already, so the batch may add two more.
    first = small_queue.client.post("/v1/jobs", json={"task": "echo", "key": "k0"})
    assert first.status_code == 202
    answers = _answers(
        _batch(
            small_queue,
            [
                {"task": "echo", "input": {"n": 1}},  # admitted (2 waiting)
                {"task": "echo", "timeout": "soon"},  # invalid
                {"task": "echo", "key": "k0"},  # the existing job
                {"task": "echo", "key": "k0", "input": {"other": True}},  # key conflict
                {"task": "nope"},  # unknown task
                {"task": "echo", "key": "k1"},  # admitted (3 waiting: full)
                {"task": "echo", "key": "k1"},  # the job admitted just above
                {"task": "echo", "key": "k1", "input": {"x": 1}},  # conflict within the batch
                {"task": "echo", "input": {"n": 2}},  # over capacity
                ["not", "an", "object"],
            ],
        )
    )
    assert [a["status"] for a in answers] == [202, 422, 200, 409, 422, 202, 200, 409, 429, 422]
    assert answers[0]["job"]["input"] == {"n": 1} and answers[0]["job"]["state"] == "queued"
    assert answers[1]["error"]["field"] == "jobs[1].timeout"
    assert answers[1]["error"]["message"].startswith("jobs[1].timeout: ")
    assert answers[2]["job"]["id"] == first.json()["id"]
    assert answers[3]["error"]["code"] == "idempotency_conflict"
    assert answers[4]["error"] == {
        "code": "unknown_task",
        "message": "jobs[4].task: unknown task 'nope'",
        "field": "jobs[4].task",
    }
    assert answers[6]["job"]["id"] == answers[5]["job"]["id"]
    assert answers[8]["error"]["code"] == "queue_full"
    assert answers[8]["error"]["retry_after"] >= 1
    assert answers[9]["error"]["field"] == "jobs[9]"
    # Exactly the admitted jobs exist, each with its queued state on its stream.
    listed = small_queue.client.get("/v1/jobs").json()["jobs"]
    assert sorted(j["id"] for j in listed) == sorted(
        [first.json()["id"], answers[0]["job"]["id"], answers[5]["job"]["id"]]
    )
    stream = small_queue.client.get(f"/v1/stream/jobs/{answers[5]['job']['id']}?offset=-1")
    assert stream.json() == [{"type": "state", "state": "queued", "attempt": 0}]


def test_a_refusal_for_capacity_does_not_stop_later_jobs_of_other_queues(
    inproc_factory: Callable[..., InProcessServer],
) -> None:
    server = inproc_factory(
        app=APP,
        env={
            "OUTLAST_QUEUES__DEFAULT__CAPACITY": "1",
            "OUTLAST_QUEUES__OTHER__CAPACITY": "5",
        },
    )
    jobs = [
        {"task": "echo"},
        {"task": "echo"},
        {"task": "echo", "queue": "other"},
        {"task": "echo"},
        {"task": "echo", "queue": "other"},
    ]
    assert [a["status"] for a in _answers(_batch(server, jobs))] == [202, 429, 202, 429, 202]
    queues = {q["name"]: q for q in server.client.get("/v1/queues").json()["queues"]}
    assert queues["default"]["queued"] == 1 and queues["other"]["queued"] == 2


def test_the_batch_itself_malformed_is_422_naming_the_field(inproc: InProcessServer) -> None:
    cases: list[tuple[Any, str]] = [
        ([{"task": "echo"}], "body"),
        ({}, "jobs"),
        ({"jobs": {"task": "echo"}}, "jobs"),
        ({"jobs": [], "extra": 1}, "extra"),
        ({"jobs": [{"task": "relay"}] * (MAX_BATCH + 1)}, "jobs"),
    ]
    for body, field in cases:
        resp = inproc.client.post("/v1/jobs/batch", json=body)
        assert resp.status_code == 422, (body, resp.text)
        assert resp.json()["error"]["field"] == field
    bad_json = inproc.client.post("/v1/jobs/batch", content=b"{", headers=JSON)
    assert bad_json.status_code == 400
    assert inproc.client.get("/v1/jobs").json()["jobs"] == []


def test_a_full_batch_of_1000_is_one_answer_and_an_empty_one_is_fine(
    inproc_factory: Callable[..., InProcessServer],
) -> None:
    server = inproc_factory(app=APP)
    jobs = [{"task": "echo", "input": {"i": i}} for i in range(MAX_BATCH)]
    answers = _answers(_batch(server, jobs))
    assert [a["status"] for a in answers] == [202] * MAX_BATCH
    assert [a["job"]["input"] for a in answers] == [j["input"] for j in jobs]
    queues = {q["name"]: q for q in server.client.get("/v1/queues").json()["queues"]}
    assert queues["default"]["queued"] == MAX_BATCH
    assert _answers(_batch(server, [])) == []


def test_too_large_batch_is_413_and_too_large_job_is_refused_alone(
    inproc_factory: Callable[..., InProcessServer],
) -> None:
    server = inproc_factory(
        app=APP,
        env={"OUTLAST_LIMITS__BATCH_BODY_BYTES": "20000", "OUTLAST_LIMITS__JOB_BODY_BYTES": "5000"},
    )
    huge = server.client.post("/v1/jobs/batch", json={"jobs": [{"task": "echo"}] * 2000})
    assert huge.status_code == 413
    assert huge.json()["error"]["code"] == "payload_too_large"
    answers = _answers(
        _batch(server, [{"task": "echo", "input": {"text": "x" * 6000}}, {"task": "echo"}])
    )
    assert [a["status"] for a in answers] == [413, 202]
    assert answers[0]["error"]["field"] == "jobs[0]"
    assert answers[0]["error"]["code"] == "payload_too_large"


def test_draining_refuses_the_whole_batch_with_503(small_queue: InProcessServer) -> None:
    small_queue.node.lifecycle.begin_drain()
    resp = _batch(small_queue, [{"task": "echo"}])
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "draining"
    assert int(resp.headers["Retry-After"]) >= 1
    assert small_queue.client.get("/v1/jobs").json()["jobs"] == []


def test_batches_need_the_jobs_write_scope(inproc_factory: Callable[..., InProcessServer]) -> None:
    tokens = [
        {"name": name, "token_sha256": hashlib.sha256(name.encode()).hexdigest(), "scopes": [scope]}
        for name, scope in (("r", "jobs:read"), ("w", "jobs:write"))
    ]
    server = inproc_factory(app=APP, env={"OUTLAST_AUTH__TOKENS": json.dumps(tokens)})
    body = {"jobs": [{"task": "echo"}]}
    assert server.client.post("/v1/jobs/batch", json=body).status_code == 401
    reader = {"Authorization": "Bearer r"}
    assert server.client.post("/v1/jobs/batch", json=body, headers=reader).status_code == 403
    writer = {"Authorization": "Bearer w"}
    resp = server.client.post("/v1/jobs/batch", json=body, headers=writer)
    assert [a["status"] for a in _answers(resp)] == [202]
    # A page in a browser cannot send it as a form (no preflight): refused before it runs.
    form = server.client.post(
        "/v1/jobs/batch",
        content=b'{"jobs": []}',
        headers={**writer, "Content-Type": "text/plain"},
    )
    assert form.status_code == 415


def test_metrics_count_each_job(small_queue: InProcessServer) -> None:
    _answers(_batch(small_queue, [{"task": "echo"}] * 5))
    text = small_queue.client.get("/metrics").text
    submitted = [line for line in text.splitlines() if line.startswith("outlast_jobs_submitted")]
    rejected = [line for line in text.splitlines() if line.startswith("outlast_jobs_rejected")]
    assert any(line.endswith(" 3.0") and 'queue="default"' in line for line in submitted), text
    assert any("queue_full" in line and line.endswith(" 2.0") for line in rejected), text


def test_callbacks_and_flow_control_fields_are_checked_per_job(
    inproc_factory: Callable[..., InProcessServer],
) -> None:
    server = inproc_factory(app=APP, env=hook_env())
    hook = "http://127.0.0.1:9/hook"
    answers = _answers(
        _batch(
            server,
            [
                {"task": "echo", "callback": hook, "priority": 5, "concurrency_key": "t1"},
                {"task": "echo", "callback": "http://10.1.2.3/hook"},  # not an allowed host
                {"task": "echo", "priority": 101},
            ],
        )
    )
    assert [a["status"] for a in answers] == [202, 422, 422]
    job = server.client.get(f"/v1/jobs/{answers[0]['job']['id']}").json()
    assert job["callback"]["url"] == hook and job["priority"] == 5
    assert job["concurrency_key"] == "t1"
    assert answers[1]["error"]["field"] == "jobs[1].callback"
    assert answers[2]["error"]["field"] == "jobs[2].priority"

"""The jobs API as docs/jobs.md describes it, against a real server process: submit, fetch with
long-poll, list with filters and cursors, idempotency keys, the job's stream, OpenAPI."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest

from outlast import connections
from outlast.api import middleware
from outlast.api.jobs import SUBMIT_FIELDS
from outlast.errors import Refusal
from tests.conftest import ServerProcess
from tests.jobs.helpers import finished, get_job, stream_messages, submit

pytestmark = pytest.mark.slow

JOB_ID = re.compile(r"job_[0-9a-hjkmnp-tv-z]{32}")


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_submit_answers_202_and_the_job_runs_to_its_result(jobs_server: ServerProcess) -> None:
    resp = httpx.post(
        f"{jobs_server.url}/v1/jobs", json={"task": "echo", "input": {"text": "hello"}}
    )
    assert resp.status_code == 202
    job = resp.json()
    assert JOB_ID.fullmatch(job["id"])
    assert resp.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["task"] == "echo" and job["queue"] == "default"
    assert job["state"] in ("queued", "running", "succeeded")
    assert job["input"] == {"text": "hello"}
    assert job["stream"] == f"/v1/stream/jobs/{job['id']}"
    assert job["events"] == f"/v1/jobs/{job['id']}/events"
    assert job["max_attempts"] == 1  # the task says retries=0

    done = finished(jobs_server, job["id"])
    assert done["state"] == "succeeded"
    assert done["result"] == {"text": "hello"}
    assert done["error"] is None
    assert done["attempt"] == 1
    created, started, ended = (_ts(done[k]) for k in ("created_at", "started_at", "finished_at"))
    assert created <= started <= ended

    # The job's stream is a closed JSON-mode durable stream telling the same story.
    resp = httpx.get(f"{jobs_server.url}{done['stream']}", params={"offset": "-1"})
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers.get("Stream-Closed") == "true"
    assert resp.json() == [
        {"type": "state", "state": "queued", "attempt": 0},
        {"type": "state", "state": "running", "attempt": 1},
        {"type": "result", "result": {"text": "hello"}},
        {"type": "state", "state": "succeeded", "attempt": 1},
    ]


def test_job_ids_are_unguessable_and_sorted_by_creation(jobs_server: ServerProcess) -> None:
    ids = [submit(jobs_server, "echo", input={"n": i}, delay=3600)["id"] for i in range(30)]
    assert len(set(ids)) == 30
    assert ids == sorted(ids)  # created one after the other: sorted by creation time
    assert all(JOB_ID.fullmatch(i) for i in ids)


def test_submission_fields_override_the_task_defaults(jobs_server: ServerProcess) -> None:
    job = submit(jobs_server, "echo", input={}, timeout=5, retries=2, delay=3600)
    assert job["max_attempts"] == 3
    assert job["timeout"] == 5
    assert job["state"] == "queued"


def test_python_tasks_emit_output_async_and_sync(jobs_server: ServerProcess) -> None:
    for task in ("chatty", "sync_emit"):
        job = finished(jobs_server, submit(jobs_server, task, input={"n": 3})["id"])
        assert job["state"] == "succeeded", job
        assert job["result"] == {"emitted": 3}
        outputs = [m for m in stream_messages(jobs_server, job["id"]) if m["type"] == "output"]
        assert outputs == [{"type": "output", "data": {"i": i}} for i in range(3)]


def test_a_result_that_is_not_json_fails_the_job_clearly(jobs_server: ServerProcess) -> None:
    job = finished(jobs_server, submit(jobs_server, "not_json")["id"])
    assert job["state"] == "failed"
    assert job["error"]["code"] == "exception"
    assert "JSON" in job["error"]["message"]


def test_get_with_wait_long_polls_until_terminal_or_expiry(
    jobs_server: ServerProcess,
) -> None:
    url = jobs_server.url
    # A job that cannot finish soon: the wait expires and the job comes back as it is.
    later = submit(jobs_server, "echo", input={}, delay=3600)
    resp = httpx.get(f"{url}/v1/jobs/{later['id']}", params={"wait": 0.3}, timeout=10)
    assert resp.status_code == 200
    assert resp.json()["state"] == "queued"
    # A job that finishes: the wait returns it terminal.
    soon = submit(jobs_server, "work", input={"ms": 200})
    resp = httpx.get(f"{url}/v1/jobs/{soon['id']}", params={"wait": 30}, timeout=40)
    assert resp.json()["state"] == "succeeded"
    # A terminal job with a wait answers at once.
    resp = httpx.get(f"{url}/v1/jobs/{soon['id']}", params={"wait": 30}, timeout=40)
    assert resp.json()["state"] == "succeeded"


def test_idempotency_key_returns_the_same_job_or_409(jobs_server: ServerProcess) -> None:
    url = f"{jobs_server.url}/v1/jobs"
    body = {"task": "echo", "input": {"a": 1, "b": [1, 2]}, "key": "order-42"}
    first = httpx.post(url, json=body)
    assert first.status_code == 202
    # The same task and input (keys in another order): 200 with the same job.
    again = httpx.post(url, json={**body, "input": {"b": [1, 2], "a": 1}})
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Location"] == f"/v1/jobs/{first.json()['id']}"
    # Another input, or another task, with the same key: 409.
    for other in ({**body, "input": {"a": 2}}, {**body, "task": "chatty", "input": {"n": 1}}):
        resp = httpx.post(url, json=other)
        assert resp.status_code == 409
        error = resp.json()["error"]
        assert error["code"] == "idempotency_conflict"
        assert "key" in error["message"]
    # Only one job was made.
    listed = httpx.get(url).json()["jobs"]
    assert [j["id"] for j in listed] == [first.json()["id"]]


def test_idempotency_holds_under_concurrent_submits(jobs_server: ServerProcess) -> None:
    import asyncio

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"task": "echo", "input": {"x": 1}, "key": "same", "delay": 3600}
            return await asyncio.gather(
                *(client.post(f"{jobs_server.url}/v1/jobs", json=body) for _ in range(20))
            )

    answers = asyncio.run(burst())
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] * 19 + [202]
    assert len({r.json()["id"] for r in answers}) == 1


def test_delay_defers_the_first_attempt(jobs_server: ServerProcess) -> None:
    job = submit(jobs_server, "echo", input={}, delay=1.0)
    assert job["state"] == "queued"
    done = finished(jobs_server, job["id"])
    assert done["state"] == "succeeded"
    waited = (_ts(done["started_at"]) - _ts(done["created_at"])).total_seconds()
    assert waited >= 1.0


def test_list_filters_and_pages_newest_first(jobs_server: ServerProcess) -> None:
    url = f"{jobs_server.url}/v1/jobs"
    done_ids = [submit(jobs_server, "echo", input={"n": i})["id"] for i in range(5)]
    for job_id in done_ids:
        finished(jobs_server, job_id)
    waiting_ids = [
        submit(jobs_server, "chatty", input={"n": 1}, delay=3600)["id"] for _ in range(4)
    ]
    everything = sorted(done_ids + waiting_ids, reverse=True)

    # Pages of 3 with the cursor: every job once, newest first, then no cursor.
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        resp = httpx.get(url, params=params)
        assert resp.status_code == 200
        page = resp.json()
        seen += [j["id"] for j in page["jobs"]]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == everything
    assert pages == 3

    def ids(**params: Any) -> list[str]:
        resp = httpx.get(url, params=params)
        assert resp.status_code == 200, resp.text
        return [j["id"] for j in resp.json()["jobs"]]

    assert ids(state="queued") == sorted(waiting_ids, reverse=True)
    assert ids(state="succeeded") == sorted(done_ids, reverse=True)
    assert ids(task="echo") == sorted(done_ids, reverse=True)
    assert ids(task="chatty", state="queued", limit=2) == sorted(waiting_ids, reverse=True)[:2]
    assert ids(queue="default") == everything
    assert ids(queue="elsewhere") == []
    assert ids(state="failed") == []


def test_job_stream_is_readable_live_with_the_durable_streams_protocol(
    jobs_server: ServerProcess,
) -> None:
    job = submit(jobs_server, "chatty", input={"n": 3})
    done = finished(jobs_server, job["id"])
    url = f"{jobs_server.url}/v1/stream/jobs/{job['id']}"
    head = httpx.head(url)
    assert head.status_code == 200
    assert head.headers["Stream-Closed"] == "true"
    # Reading from the middle: the rest, and nothing before it.
    first = httpx.get(url, params={"offset": "-1"}).json()
    assert first[-1] == {"type": "state", "state": "succeeded", "attempt": 1}
    assert done["result"] == {"emitted": 3}


def test_openapi_documents_the_jobs_api(jobs_server: ServerProcess) -> None:
    resp = httpx.get(f"{jobs_server.url}/openapi.json")
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["openapi"].startswith("3.1")
    paths = doc["paths"]
    for path in (
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/callback/retry",
    ):
        assert path in paths, path
    assert {"post", "get"} <= set(paths["/v1/jobs"])
    submit_doc = paths["/v1/jobs"]["post"]
    assert {"202", "200", "409", "413", "422", "429", "503"} <= set(submit_doc["responses"])

    # Every $ref resolves inside the document.
    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if "$ref" in node else []
            return found + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(doc):
        assert ref.startswith("#/")
        target: Any = doc
        for part in ref[2:].split("/"):
            target = target[part]
        assert isinstance(target, dict)
    # The submission schema lists exactly the fields the server accepts.
    fields = set(doc["components"]["schemas"]["Submission"]["properties"])
    assert fields == SUBMIT_FIELDS
    json.dumps(doc)


def test_openapi_lists_what_the_connection_layer_and_browser_guard_refuse_on_every_operation(
    jobs_server: ServerProcess,
) -> None:
    """Every refusal the connection layer and the middleware answer before an endpoint runs
    (found in the code, not listed here again) is on every operation it can reach, as a shared
    response that names its code; the 503 carries Retry-After; nothing else is named."""
    doc = httpx.get(f"{jobs_server.url}/openapi.json").json()
    refusals = {
        value
        for module in (connections, middleware)
        for value in vars(module).values()
        if isinstance(value, Refusal)
    }
    assert {r.status for r in refusals} == {403, 408, 415, 431, 503}
    shared = doc["components"]["responses"]

    def codes(response: dict[str, Any]) -> set[str]:
        ref = response.get("$ref", "")
        assert ref.startswith("#/components/responses/"), response
        return set(shared[ref.rsplit("/", 1)[1]]["content"]["application/json"]["examples"])

    operations = 0
    for path, item in doc["paths"].items():
        for method in ("get", "put", "post", "delete", "head"):
            if method not in item:
                continue
            operations += 1
            responses = item[method]["responses"]
            for refusal in refusals:
                if refusal == middleware.UNSUPPORTED_MEDIA_TYPE and not (
                    middleware.checks_content_type(method, path)
                ):
                    assert "415" not in responses, (method, path)
                    continue
                assert refusal.code in codes(responses[str(refusal.status)]), (method, path)
    assert operations >= 20
    named = {code for name in shared for code in codes({"$ref": f"#/components/responses/{name}"})}
    assert named == {r.code for r in refusals}
    assert "Retry-After" in shared["Unavailable"]["headers"]
    assert "415" in doc["paths"]["/v1/jobs"]["post"]["responses"]
    assert "415" not in doc["paths"]["/v1/stream/{name}"]["post"]["responses"]


def test_queues_endpoint_counts_jobs(
    jobs_server_factory: Callable[..., ServerProcess],
) -> None:
    server = jobs_server_factory(
        env={
            "OUTLAST_QUEUES__DEFAULT__CONCURRENCY": "8",
            "OUTLAST_QUEUES__BATCH__CONCURRENCY": "2",
            "OUTLAST_QUEUES__BATCH__CAPACITY": "5",
        }
    ).start()
    for _ in range(3):
        submit(server, "echo", input={}, queue="batch", delay=3600)
    resp = httpx.get(f"{server.url}/v1/queues")
    assert resp.status_code == 200
    queues = {q["name"]: q for q in resp.json()["queues"]}
    assert queues["batch"]["queued"] == 3
    assert queues["batch"]["capacity"] == 5 and queues["batch"]["concurrency"] == 2
    assert queues["default"]["queued"] == 0
    assert get_job(server, submit(server, "echo", input={}, queue="batch", delay=9)["id"])


def test_a_task_on_an_unconfigured_queue_stops_the_start(
    jobs_server_factory: Callable[..., ServerProcess],
) -> None:
    server = jobs_server_factory(args=["--app", "tests.jobs.apps:misconfigured"])
    with pytest.raises(AssertionError, match="exited with 2"):
        server.start()
    assert "task 'lost' uses queue 'missing'" in server.log()

"""Bad input answers a clear 4xx with ``{"error": {"code", "message"}}`` naming the field, never a
500, and never leaves a job behind. The app and its workers run in this process (``inproc``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import InProcessServer
from tests.jobs.conftest import APP
from tests.jobs.helpers import finished, submit

# Job submissions are JSON bodies; any other type is refused (415).
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def jobs_server(
    inproc_factory: Callable[..., InProcessServer], runs: Path
) -> Iterator[InProcessServer]:
    """The test tasks, served in this process (requests go through ``jobs_server.client``)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OUTLAST_TEST_RUNS", str(runs))  # read by the tasks, in this process
        yield inproc_factory(app=APP, workers=True, env={"OUTLAST_JOBS__BACKOFF_BASE": "0.05"})


def _error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    return error


# (body, the field the answer must name, the status)
INVALID_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({}, "task"),
    ({"task": 5}, "task"),
    ({"task": ""}, "task"),
    ({"task": None}, "task"),
    ({"task": "echo", "input": {}, "bogus": 1}, "bogus"),
    ({"task": "echo", "queue": 7}, "queue"),
    ({"task": "echo", "timeout": "soon"}, "timeout"),
    ({"task": "echo", "timeout": 0}, "timeout"),
    ({"task": "echo", "timeout": -1}, "timeout"),
    ({"task": "echo", "timeout": True}, "timeout"),
    ({"task": "echo", "retries": -1}, "retries"),
    ({"task": "echo", "retries": 1.5}, "retries"),
    ({"task": "echo", "retries": "3"}, "retries"),
    ({"task": "echo", "retries": 10**6}, "retries"),
    ({"task": "echo", "delay": -5}, "delay"),
    ({"task": "echo", "delay": [1]}, "delay"),
    ({"task": "echo", "key": 12}, "key"),
    ({"task": "echo", "key": ""}, "key"),
    ({"task": "echo", "key": "k" * 1000}, "key"),
    ({"task": "echo", "input": [1, 2]}, "input"),
    ({"task": "echo", "input": "text"}, "input"),
    ({"task": "work", "input": {}}, "input"),  # missing argument
    ({"task": "work", "input": {"ms": 1, "extra": 2}}, "input"),  # unexpected argument
    ({"task": "work", "input": {"ms": "fast"}}, "input.ms"),  # wrong type for the annotation
    ({"task": "chatty", "input": {"n": 1, "gate": 5}}, "input.gate"),
    ({"task": "http", "input": {"url": 5}}, "input.url"),
]


def test_invalid_fields_are_422_naming_the_field(jobs_server: InProcessServer) -> None:
    url = f"{jobs_server.url}/v1/jobs"
    for body, field in INVALID_FIELDS:
        error = _error(jobs_server.client.post(url, json=body), 422)
        assert error["field"] == field, (body, error)
        assert field.split(".")[-1] in error["message"], (body, error)
    # A number too large for a float is not one outlast accepts anywhere (no infinities).
    resp = jobs_server.client.post(url, content=b'{"task": "echo", "timeout": 1e999}', headers=JSON)
    assert _error(resp, 400)["code"] == "invalid_json"
    assert jobs_server.client.get(url).json()["jobs"] == []  # nothing was admitted


def test_unknown_task_and_queue_are_422(jobs_server: InProcessServer) -> None:
    url = f"{jobs_server.url}/v1/jobs"
    error = _error(jobs_server.client.post(url, json={"task": "no_such_task"}), 422)
    assert error["code"] == "unknown_task" and error["field"] == "task"
    assert "no_such_task" in error["message"]
    error = _error(jobs_server.client.post(url, json={"task": "echo", "queue": "nowhere"}), 422)
    assert error["code"] == "unknown_queue" and error["field"] == "queue"
    assert "nowhere" in error["message"]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"not json",
        b'{"task": "echo",}',
        b"\xff\xfe{}",
        b'{"task": "echo", "input": {"x": NaN}}',
        b'{"task": "echo", "input": {"x": Infinity}}',
        b"[" * 200_000 + b"]" * 200_000,  # nesting deep enough to break a recursive parser
        b'{"task": "echo", "input": {"n": ' + b"9" * 5000 + b"}}",
    ],
)
def test_malformed_json_is_400(jobs_server: InProcessServer, raw: bytes) -> None:
    resp = jobs_server.client.post(
        f"{jobs_server.url}/v1/jobs", content=raw, headers={"Content-Type": "application/json"}
    )
    error = _error(resp, 400)
    assert error["code"] == "invalid_json"


def test_a_body_that_is_not_an_object_is_422(jobs_server: InProcessServer) -> None:
    for raw in (b"[]", b"5", b'"echo"', b"null"):
        resp = jobs_server.client.post(f"{jobs_server.url}/v1/jobs", content=raw, headers=JSON)
        error = _error(resp, 422)
        assert error["field"] == "body"


def test_huge_bodies_are_413(jobs_server: InProcessServer) -> None:
    url = f"{jobs_server.url}/v1/jobs"
    big = {"task": "echo", "input": {"blob": "x" * (1 << 20)}}
    error = _error(jobs_server.client.post(url, json=big), 413)
    assert error["code"] == "payload_too_large"

    # Without a Content-Length (chunked): counted as it arrives.
    def chunks() -> Any:
        yield b'{"task": "echo", "input": {"blob": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}}'

    error = _error(jobs_server.client.post(url, content=chunks(), headers=JSON), 413)
    assert error["code"] == "payload_too_large"
    # Just under the limit is fine.
    ok = {"task": "echo", "input": {"blob": "z" * ((1 << 20) - 100)}}
    assert jobs_server.client.post(url, json=ok).status_code == 202
    assert len(jobs_server.client.get(url).json()["jobs"]) == 1


def test_bad_ids_and_query_parameters_are_clear_4xx(jobs_server: InProcessServer) -> None:
    url = jobs_server.url
    real = submit(jobs_server, "echo", input={})["id"]
    for bad in ("nope", "job_", real + "x", real[:-1] + "U", "job_" + "0" * 32, "%00"):
        for method, path in (
            ("GET", f"/v1/jobs/{bad}"),
            ("GET", f"/v1/jobs/{bad}/events"),
            ("POST", f"/v1/jobs/{bad}/cancel"),
        ):
            resp = jobs_server.client.request(method, f"{url}{path}")
            assert 400 <= resp.status_code < 500, (bad, path, resp.status_code)
            assert _error(resp, resp.status_code)["code"]
    for params, field in (
        ({"wait": "soon"}, "wait"),
        ({"wait": "-1"}, "wait"),
        ({"wait": "nan"}, "wait"),
    ):
        delayed = submit(jobs_server, "echo", input={}, delay=3600)["id"]
        error = _error(jobs_server.client.get(f"{url}/v1/jobs/{delayed}", params=params), 422)
        assert error["field"] == field
        # The same for a job that has finished: the request is wrong either way.
        finished(jobs_server, real)
        assert (
            _error(jobs_server.client.get(f"{url}/v1/jobs/{real}", params=params), 422)["field"]
            == field
        )
    for params, field, status in (
        ({"state": "sleeping"}, "state", 422),
        ({"limit": "0"}, "limit", 422),
        ({"limit": "many"}, "limit", 422),
        ({"limit": "100000"}, "limit", 422),
        ({"cursor": "garbage"}, "cursor", 400),
    ):
        error = _error(jobs_server.client.get(f"{url}/v1/jobs", params=params), status)
        assert field in error["message"] or error.get("field") == field
    for offset in ("garbage", "-5", "9" * 40):
        resp = jobs_server.client.get(f"{url}/v1/jobs/{real}/events", params={"offset": offset})
        assert _error(resp, 400)["code"] == "invalid_offset"
    assert finished(jobs_server, real)["state"] == "succeeded"


def test_wrong_methods_and_content_are_clear(jobs_server: InProcessServer) -> None:
    url = jobs_server.url
    _error(jobs_server.client.put(f"{url}/v1/jobs"), 405)
    _error(jobs_server.client.delete(f"{url}/v1/jobs"), 405)
    job = submit(jobs_server, "echo", input={})
    _error(jobs_server.client.get(f"{url}/v1/jobs/{job['id']}/cancel"), 405)
    finished(jobs_server, job["id"])

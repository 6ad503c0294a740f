"""The built-in ``http`` task against a fake upstream on 127.0.0.1, and egress refusals.

The app and its workers run in this process (``inproc``); the fake upstream is a real uvicorn
on 127.0.0.1 in a thread."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import InProcessServer, upstream_env, wait_for

FAST_RETRIES = {"OUTLAST_JOBS__BACKOFF_BASE": "0.01"}


def _run(server: InProcessServer, body: dict[str, Any]) -> dict[str, Any]:
    resp = server.client.post("/v1/jobs", json=body)
    assert resp.status_code == 202, resp.text
    job = server.client.get(f"/v1/jobs/{resp.json()['id']}", params={"wait": 30}, timeout=40)
    result: dict[str, Any] = job.json()
    assert result["state"] in ("succeeded", "failed"), result
    return result


def test_http_task_makes_the_request_and_keeps_the_answer(
    inproc_factory: Callable[..., InProcessServer], upstream: Any
) -> None:
    server = inproc_factory(env=upstream_env(upstream), workers=True)
    job = _run(
        server,
        {
            "task": "http",
            "input": {
                "url": f"{upstream.url}/echo",
                "method": "POST",
                "headers": {"X-From": "outlast"},
                "body": {"hello": "world"},
            },
        },
    )
    assert job["state"] == "succeeded"
    result = job["result"]
    assert result["status"] == 200
    echoed = httpx.Response(200, content=result["body"]).json()
    assert echoed["method"] == "POST"
    assert echoed["headers"]["x-from"] == "outlast"
    assert echoed["body"] == '{"hello": "world"}'


def test_http_task_retries_5xx_then_fails_with_the_status(
    inproc_factory: Callable[..., InProcessServer], upstream: Any
) -> None:
    server = inproc_factory(env={**upstream_env(upstream), **FAST_RETRIES}, workers=True)
    job = _run(
        server, {"task": "http", "input": {"url": f"{upstream.url}/status/503"}, "retries": 2}
    )
    assert job["state"] == "failed"
    assert job["attempt"] == 3
    assert job["error"]["code"] == "upstream_status"
    assert job["error"]["status"] == 503
    assert "fake upstream says 503" in job["error"]["body"]
    assert upstream.requests["/status/503"] == 3


def test_http_task_keeps_a_4xx_answer_without_retrying(
    inproc_factory: Callable[..., InProcessServer], upstream: Any
) -> None:
    server = inproc_factory(env={**upstream_env(upstream), **FAST_RETRIES}, workers=True)
    job = _run(server, {"task": "http", "input": {"url": f"{upstream.url}/status/404"}})
    assert job["state"] == "succeeded"
    assert job["result"]["status"] == 404
    assert upstream.requests["/status/404"] == 1


def test_http_task_retries_connection_errors(
    inproc_factory: Callable[..., InProcessServer], upstream: Any
) -> None:
    server = inproc_factory(env={**upstream_env(upstream), **FAST_RETRIES}, workers=True)
    closed_port = upstream.port + 0
    upstream.stop()  # nothing listens there any more
    job = _run(
        server,
        {"task": "http", "input": {"url": f"http://127.0.0.1:{closed_port}/echo"}, "retries": 1},
    )
    assert job["state"] == "failed"
    assert job["attempt"] == 2
    assert job["error"]["code"] == "upstream_error"


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://127.0.0.1:9/x", "egress_denied"),
        ("http://10.1.2.3/x", "egress_denied"),
        ("http://169.254.169.254/latest/meta-data", "egress_denied"),
        ("http://[::1]:9/x", "egress_denied"),
        ("http://localhost:9/x", "egress_denied"),
    ],
)
def test_private_addresses_are_refused_at_submit(
    inproc_factory: Callable[..., InProcessServer], url: str, code: str
) -> None:
    # Every host is allowed by name here; the address check alone must refuse these.
    server = inproc_factory(env={"OUTLAST_EGRESS__ALLOWED_HOSTS": '["*"]'})
    resp = server.client.post("/v1/jobs", json={"task": "http", "input": {"url": url}})
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"]["code"] == code


def test_hosts_outside_the_allow_list_are_refused(inproc: InProcessServer) -> None:
    resp = inproc.client.post(
        "/v1/jobs", json={"task": "http", "input": {"url": "https://example.com/"}}
    )
    assert resp.status_code == 403
    assert resp.json()["error"]["field"] == "input.url"


def test_http_task_retries_429(
    inproc_factory: Callable[..., InProcessServer], upstream: Any
) -> None:
    server = inproc_factory(env={**upstream_env(upstream), **FAST_RETRIES}, workers=True)
    job = _run(
        server, {"task": "http", "input": {"url": f"{upstream.url}/status/429"}, "retries": 1}
    )
    assert job["state"] == "failed"
    assert job["error"]["status"] == 429
    assert upstream.requests["/status/429"] == 2


def test_http_task_is_bounded_by_the_job_timeout(
    inproc_factory: Callable[..., InProcessServer], upstream: Any
) -> None:
    server = inproc_factory(env={**upstream_env(upstream), **FAST_RETRIES}, workers=True)
    job = _run(
        server,
        {"task": "http", "input": {"url": f"{upstream.url}/hang"}, "timeout": 0.5, "retries": 0},
    )
    assert job["state"] == "failed"
    assert job["error"]["code"] == "timeout"
    assert upstream.requests["/hang"] == 1


def test_http_task_can_be_cancelled_mid_request(
    inproc_factory: Callable[..., InProcessServer], upstream: Any
) -> None:
    server = inproc_factory(env=upstream_env(upstream), workers=True)
    http = server.client
    resp = http.post("/v1/jobs", json={"task": "http", "input": {"url": f"{upstream.url}/hang"}})
    job_id = resp.json()["id"]
    wait_for(lambda: upstream.requests["/hang"] == 1, timeout=30)
    assert http.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    job = http.get(f"/v1/jobs/{job_id}", params={"wait": 30}, timeout=40).json()
    assert job["state"] == "cancelled"
    assert job["error"]["code"] == "cancelled"

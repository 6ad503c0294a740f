"""The relay against a fake upstream on 127.0.0.1: read to the end whatever readers do, every
event stored in order, and each upstream fault ending with the right state and message."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess, wait_for
from tests.relay.helpers import all_messages, finished, relay_server, stored_events, submit

pytestmark = pytest.mark.slow


def test_upstream_is_read_to_the_end_after_the_client_leaves(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = relay_server(server_factory, upstream)
    body = {
        "task": "relay",
        "input": {"upstream": "fake", "path": "/sse?n=200&interval=0.01&key=k1", "method": "GET"},
    }
    seen = 0
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", f"{server.url}/v1/jobs", json=body, headers={"Accept": "text/event-stream"}
        ) as resp,
    ):
        assert resp.status_code == 200
        job_id = resp.headers["Outlast-Job-Id"]
        for line in resp.iter_lines():
            if line.startswith("data:") and '"i"' in line:
                seen += 1
                if seen == 5:
                    break  # the client goes away mid-stream
    assert seen == 5
    job = finished(server, job_id)
    assert job["state"] == "succeeded", job
    assert upstream.sent["k1"] == 200 and upstream.completed["k1"] == 1
    events = stored_events(server, job_id)
    assert [json.loads(e["data"])["i"] for e in events[:-1]] == list(range(200))
    assert events[-1]["data"] == "[DONE]"
    assert [e["id"] for e in events[:-1]] == [str(i) for i in range(200)]
    assert job["result"] == {"status": 200, "events": 201, "done": True}


def test_relay_finishes_during_a_graceful_shutdown(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = relay_server(server_factory, upstream, OUTLAST_SERVER__GRACE="30")
    job_id = submit(server, "/sse?n=100&interval=0.02&key=k2")
    wait_for(lambda: upstream.sent["k2"] >= 10, timeout=20)
    server.signal(signal.SIGTERM)
    assert server.wait_exit(timeout=60) == 0
    assert upstream.completed["k2"] == 1
    server.start()
    job = finished(server, job_id)
    assert job["state"] == "succeeded"
    assert job["attempt"] == 1
    assert len(stored_events(server, job_id)) == 101


def test_openai_style_chunks_give_the_text(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    from tests.fakes.upstream import FAKE_TEXT

    server = relay_server(server_factory, upstream)
    resp = httpx.post(
        f"{server.url}/v1/jobs",
        json={
            "task": "relay",
            "input": {"upstream": "fake", "path": "/v1/chat/completions", "body": {"stream": True}},
        },
    )
    job = finished(server, resp.json()["id"])
    assert job["state"] == "succeeded"
    assert job["result"]["text"] == FAKE_TEXT
    assert job["result"]["done"] is True
    # The upstream's secret header was sent; the client never saw it.
    assert upstream.last_headers["chat"]["authorization"] == "Bearer upstream-secret"
    assert "upstream-secret" not in resp.text


def test_resume_with_last_event_id_after_a_cut(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = relay_server(server_factory, upstream)
    job = finished(server, submit(server, "/drop?after=3&n=6&key=k3"))
    assert job["state"] == "succeeded", job
    assert job["attempt"] == 2
    assert upstream.last_headers["k3"]["last-event-id"] == "2"
    events = stored_events(server, job["id"])
    assert [e["data"] for e in events] == [*(json.dumps({"i": i}) for i in range(6)), "[DONE]"]


def test_a_cut_without_ids_ends_as_interrupted(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = relay_server(server_factory, upstream)
    job = finished(server, submit(server, "/drop?after=3&n=6&ids=0&key=k4"))
    assert job["state"] == "failed"
    assert job["error"]["code"] == "interrupted"
    assert upstream.requests["/drop"] == 1  # never repeated: it would duplicate output
    assert len(stored_events(server, job["id"])) == 3


def _chat_relay(server: ServerProcess, headers: dict[str, str]) -> dict[str, Any]:
    body = {
        "task": "relay",
        "input": {
            "upstream": "fake",
            "path": "/v1/chat/completions",
            "body": {"stream": True},
            "headers": headers,
        },
    }
    resp = httpx.post(f"{server.url}/v1/jobs", json=body)
    assert resp.status_code == 202, resp.text
    return finished(server, resp.json()["id"])


def test_an_openai_answer_closed_cleanly_mid_way_is_interrupted_not_succeeded(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    # No [DONE], no finish_reason: a proxy closed the connection mid-answer.
    server = relay_server(server_factory, upstream)
    job = _chat_relay(server, {"x-fake-end-after": "4", "x-fake-key": "end1"})
    assert job["state"] == "failed", job
    assert job["error"]["code"] == "interrupted"
    assert "without data: [DONE] or a finish_reason" in job["error"]["message"]
    assert upstream.requests["/v1/chat/completions"] == 1  # never repeated without ids
    assert len(stored_events(server, job["id"])) == 5  # the role chunk and four words


def test_an_openai_answer_closed_mid_way_with_ids_resumes(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    from tests.fakes.upstream import FAKE_TEXT

    server = relay_server(server_factory, upstream)
    headers = {"x-fake-end-after": "4", "x-fake-ids": "1", "x-fake-key": "end2"}
    job = _chat_relay(server, headers)
    assert job["state"] == "succeeded", job
    assert job["attempt"] == 2
    assert upstream.last_headers["end2"]["last-event-id"] == "3"
    assert job["result"]["text"] == FAKE_TEXT
    assert job["result"]["done"] is True


@pytest.mark.parametrize("status", [500, 429])
def test_upstream_errors_before_any_event_are_retried_then_fail(
    server_factory: Callable[..., ServerProcess], upstream: Any, status: int
) -> None:
    server = relay_server(server_factory, upstream)
    job = finished(server, submit(server, f"/status/{status}", retries=1))
    assert job["state"] == "failed"
    assert job["attempt"] == 2
    assert job["error"]["code"] == "upstream_status"
    assert job["error"]["status"] == status
    assert f"fake upstream says {status}" in job["error"]["body"]
    assert upstream.requests[f"/status/{status}"] == 2


def test_a_client_error_is_not_retried(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = relay_server(server_factory, upstream)
    job = finished(server, submit(server, "/status/401", retries=3))
    assert job["state"] == "failed"
    assert job["attempt"] == 1
    assert job["error"]["status"] == 401


def test_connection_refused(server_factory: Callable[..., ServerProcess], upstream: Any) -> None:
    server = relay_server(server_factory, upstream)
    upstream.stop()
    job = finished(server, submit(server, "/sse", retries=1))
    assert job["state"] == "failed"
    assert job["attempt"] == 2
    assert job["error"]["code"] == "upstream_error"
    assert "connect" in job["error"]["message"]


def test_hang_before_the_first_byte(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = relay_server(server_factory, upstream)
    job = finished(server, submit(server, "/hang", retries=0))
    assert job["state"] == "failed"
    assert job["error"]["code"] == "upstream_error"
    assert "no response from the upstream within 1 s" in job["error"]["message"]


def test_stall_mid_stream_after_events_without_ids(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = relay_server(server_factory, upstream)
    job = finished(server, submit(server, "/stall?after=3&ids=0", retries=2))
    assert job["state"] == "failed"
    assert job["error"]["code"] == "interrupted"
    assert "silent for more than 1 s" in job["error"]["message"]
    assert len(stored_events(server, job["id"])) == 3


def test_malformed_lines_follow_the_whatwg_rules(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = relay_server(server_factory, upstream)
    job = finished(server, submit(server, "/malformed"))
    assert job["state"] == "succeeded", job
    events = stored_events(server, job["id"])
    assert [(e["event"], e["data"]) for e in events] == [
        ("message", "first"),
        ("message", "second"),
        ("custom", "third\n spaced"),
        ("message", "[DONE]"),
    ]
    assert "id" not in events[1]  # an id containing NUL is ignored
    assert job["result"]["done"] is True


def test_an_over_long_line_fails_instead_of_growing(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = relay_server(server_factory, upstream)
    job = finished(server, submit(server, "/longline?size=200000"))
    assert job["state"] == "failed"
    assert job["error"]["code"] == "upstream_error"
    assert "line" in job["error"]["message"]
    assert len(stored_events(server, job["id"])) == 1


def test_a_stream_that_never_ends_hits_the_total_timeout(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = relay_server(server_factory, upstream)
    job = finished(server, submit(server, "/forever?interval=0.05&key=k5", timeout=1, retries=0))
    assert job["state"] == "failed"
    assert job["error"]["code"] == "timeout"
    sent = upstream.sent["k5"]
    assert sent > 0
    assert len(stored_events(server, job["id"])) <= sent


def test_stall_mid_stream_with_ids_resumes_after_the_last_event(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = relay_server(server_factory, upstream)
    job = finished(server, submit(server, "/stall?after=3&n=6&key=k6", retries=1))
    assert job["state"] == "succeeded", job
    assert job["attempt"] == 2
    assert upstream.last_headers["k6"]["last-event-id"] == "2"
    errors = [m for m in all_messages(server, job["id"]) if m["type"] == "error"]
    assert "silent for more than 1 s (idle_timeout)" in errors[0]["error"]["message"]
    events = stored_events(server, job["id"])
    assert [e["data"] for e in events] == [*(json.dumps({"i": i}) for i in range(6)), "[DONE]"]


def test_idle_timeout_on_the_last_attempt(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = relay_server(server_factory, upstream)
    job = finished(server, submit(server, "/stall?after=2&key=k7", retries=0))
    assert job["state"] == "failed"
    assert job["error"]["code"] == "upstream_error"
    assert job["error"]["message"] == (
        "the upstream was silent for more than 1 s (idle_timeout), after 2 events "
        "(a retry resumes after id 1)"
    )


def test_an_event_over_the_limit_fails(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = relay_server(server_factory, upstream, OUTLAST_RELAY__MAX_EVENT_BYTES="4096")
    upstream.open_gate("big")
    job = finished(server, submit(server, "/gate?gate=big&n=3&size=5000", retries=2))
    assert job["state"] == "failed"
    assert job["attempt"] == 1  # the same upstream would send the same event again
    assert job["error"]["code"] == "upstream_error"
    assert "an event is larger than 4096 bytes" in job["error"]["message"]
    assert stored_events(server, job["id"]) == []


def test_a_plain_answer_is_kept_whole(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = relay_server(server_factory, upstream)
    resp = httpx.post(
        f"{server.url}/v1/jobs",
        json={"task": "relay", "input": {"upstream": "fake", "path": "/echo", "body": {"a": 1}}},
    )
    job = finished(server, resp.json()["id"])
    assert job["state"] == "succeeded", job
    result = job["result"]
    assert (result["status"], result["events"], result["done"]) == (200, 0, False)
    assert result["content_type"] == "application/json"
    echoed = json.loads(result["body"])
    assert echoed["method"] == "POST" and json.loads(echoed["body"]) == {"a": 1}
    assert echoed["headers"]["accept"] == "text/event-stream"


def test_a_raw_url_to_an_allowed_private_host(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = relay_server(server_factory, upstream)
    resp = httpx.post(
        f"{server.url}/v1/jobs",
        json={"task": "relay", "input": {"url": f"{upstream.url}/sse?n=3", "method": "GET"}},
    )
    assert resp.status_code == 202, resp.text
    job = finished(server, resp.json()["id"])
    assert job["result"] == {"status": 200, "events": 4, "done": True}
    # The named upstream's secret header goes only to the named upstream.
    assert "authorization" not in upstream.last_headers["/sse"]


def test_a_named_upstream_at_a_private_address_needs_allow_private(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = server_factory(env={"OUTLAST_UPSTREAMS__LOCAL__URL": upstream.url}).start()
    resp = httpx.post(
        f"{server.url}/v1/jobs",
        json={"task": "relay", "input": {"upstream": "local", "path": "/sse"}},
    )
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"]["code"] == "egress_denied"
    assert upstream.requests["/sse"] == 0


def test_metadata_is_refused_even_with_allow_private(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(
        env={"OUTLAST_EGRESS__ALLOWED_HOSTS": '["*"]', "OUTLAST_EGRESS__ALLOW_PRIVATE": "true"}
    ).start()
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[::ffff:169.254.169.254]/"):
        resp = httpx.post(f"{server.url}/v1/jobs", json={"task": "relay", "input": {"url": url}})
        assert resp.status_code == 403, resp.text
        assert "metadata" in resp.json()["error"]["message"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/sse",
        "http://127.1:9/sse",
        "http://2130706433:9/sse",
        "http://0.0.0.0:9/sse",
        "http://10.0.0.8/sse",
        "http://172.16.0.1/sse",
        "http://192.168.1.1/sse",
        "http://100.64.0.1/sse",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:9/sse",
        "http://[::ffff:127.0.0.1]:9/sse",
        "http://[fe80::1]:9/sse",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://localhost:9/sse",
    ],
)
def test_relay_refuses_private_targets(
    server_factory: Callable[..., ServerProcess], url: str
) -> None:
    server = server_factory(env={"OUTLAST_EGRESS__ALLOWED_HOSTS": '["*"]'}).start()
    resp = httpx.post(f"{server.url}/v1/jobs", json={"task": "relay", "input": {"url": url}})
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"]["code"] == "egress_denied"


def test_unknown_upstream_is_422(server: ServerProcess) -> None:
    resp = httpx.post(
        f"{server.url}/v1/jobs", json={"task": "relay", "input": {"upstream": "nope", "path": "/"}}
    )
    assert resp.status_code == 422
    assert resp.json()["error"]["field"] == "input.upstream"

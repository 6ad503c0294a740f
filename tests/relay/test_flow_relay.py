"""Relays and flow control (docs/flow-control.md): the relay queue's slots, and retries that do
not multiply between outlast and an SDK that retries by itself."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ServerProcess, wait_for
from tests.fakes.upstream import FAKE_TEXT, USAGE
from tests.relay.helpers import finished, stored_events
from tests.relay.test_passthrough import CHAT, MESSAGES, _Tee, passthrough_server, sdk

pytestmark = pytest.mark.slow

STREAMS = 50


def test_fifty_streams_at_once_all_get_their_first_byte_without_waiting_for_a_slot(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    # Default settings: the pass-through's relays run on the "relay" queue. Each upstream
    # answer sends its first chunk and then holds the rest: every stream gets its first event
    # only if every relay runs at once.
    server = passthrough_server(server_factory, upstream, OUTLAST_RELAY__IDLE_TIMEOUT="60")
    first = threading.Semaphore(0)
    done: list[str] = []
    errors: list[BaseException] = []

    def stream() -> None:
        body = {"model": "fake", "messages": MESSAGES, "stream": True}
        url = f"{server.url}/v1/upstreams/fake{CHAT}"
        try:
            with httpx.stream(
                "POST", url, json=body, headers={"x-fake-hold": "rest"}, timeout=60
            ) as resp:
                assert resp.status_code == 200
                lines = resp.iter_lines()
                for line in lines:
                    if line.startswith("data:"):
                        first.release()
                        break
                text = "".join(lines)
                done.append(text)
        except BaseException as exc:  # reported by the test's thread
            errors.append(exc)
            first.release()

    threads = [threading.Thread(target=stream, daemon=True) for _ in range(STREAMS)]
    for thread in threads:
        thread.start()
    for _ in range(STREAMS):
        assert first.acquire(timeout=60)  # a guard: all come while the upstream holds
    assert not errors, errors
    assert len(done) == 0  # every one is still held by the upstream
    upstream.open_gate("rest")
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert len(done) == STREAMS and all("[DONE]" in text for text in done)
    queues = {q["name"]: q for q in httpx.get(f"{server.url}/v1/queues").json()["queues"]}
    assert queues["relay"]["succeeded"] == STREAMS and queues["default"]["succeeded"] == 0


def test_an_upstream_429_reaches_the_sdk_after_one_upstream_call_per_sdk_attempt(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = passthrough_server(server_factory, upstream)
    tee = _Tee()
    with sdk(server, tee, max_retries=2) as client, pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model="fake", messages=MESSAGES, stream=True, extra_headers={"x-fake-status": "429"}
        )
    assert tee.requests == 3
    assert upstream.requests[CHAT] == 3  # one per SDK attempt: no retries multiplied
    jobs = httpx.get(f"{server.url}/v1/jobs", params={"task": "relay"}).json()["jobs"]
    assert [(j["attempt"], j["max_attempts"]) for j in jobs] == [(1, 1)] * 3


def test_relays_submitted_as_jobs_keep_their_retries(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = passthrough_server(server_factory, upstream, OUTLAST_UPSTREAMS__FAKE__RETRIES="1")
    value = {
        "upstream": "fake",
        "path": CHAT,
        "method": "POST",
        "headers": {"x-fake-status": "503"},
        "body": {"model": "fake", "messages": MESSAGES, "stream": True},
    }
    job = httpx.post(f"{server.url}/v1/jobs", json={"task": "relay", "input": value}).json()
    assert job["queue"] == "relay" and job["max_attempts"] == 2

    def ended() -> dict[str, Any] | None:
        found: dict[str, Any] = httpx.get(f"{server.url}/v1/jobs/{job['id']}").json()
        return found if found["state"] == "failed" else None

    failed = wait_for(ended, timeout=60)
    assert failed["attempt"] == 2 and upstream.requests[CHAT] == 2


def test_outlast_headers_set_the_relay_jobs_priority_and_concurrency_key(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = passthrough_server(server_factory, upstream)
    headers = {"Outlast-Priority": "7", "Outlast-Concurrency-Key": "user-1"}
    body = {"model": "fake", "messages": MESSAGES}
    resp = httpx.post(f"{server.url}/v1/upstreams/fake{CHAT}", json=body, headers=headers)
    assert resp.status_code == 200, resp.text
    job = httpx.get(f"{server.url}/v1/jobs/{resp.headers['Outlast-Job-Id']}").json()
    assert (job["priority"], job["concurrency_key"]) == (7, "user-1")
    assert "outlast-priority" not in upstream.last_headers["chat"]
    proxied = httpx.post(
        f"{server.url}/v1/proxy",
        content=b"{}",
        headers={"Upstream-Name": "fake", "Upstream-Path": "/sse", **headers},
    ).json()
    assert (proxied["priority"], proxied["concurrency_key"]) == (7, "user-1")
    for name, value in (("Outlast-Priority", "101"), ("Outlast-Priority", "x")):
        bad = httpx.post(f"{server.url}/v1/upstreams/fake{CHAT}", json=body, headers={name: value})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == name


def _chat_events(server: ServerProcess, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The data of each event a pass-through client receives (``[DONE]`` left out)."""
    url = f"{server.url}/v1/upstreams/fake{CHAT}"
    events = []
    with httpx.stream("POST", url, json=body, timeout=60) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[len("data: ") :]))
    return events


def test_usage_is_asked_for_stored_and_passed_only_to_clients_that_asked(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = passthrough_server(server_factory, upstream)
    body = {"model": "fake-model", "messages": MESSAGES, "stream": True}
    # A client that did not ask: outlast asks, keeps the usage, and does not pass it on.
    events = _chat_events(server, body)
    assert events and all(e["choices"] for e in events)
    assert upstream.last_headers["chat"]  # it was called
    jobs = httpx.get(f"{server.url}/v1/jobs", params={"task": "relay"}).json()["jobs"]
    job = finished(server, jobs[0]["id"])
    assert job["result"]["usage"] == USAGE
    assert job["input"]["body"] == body  # the job's input is the client's request
    assert any('"usage"' in e["data"] for e in stored_events(server, job["id"]))
    # A client that asked gets it, as the upstream sent it.
    asked = _chat_events(server, {**body, "stream_options": {"include_usage": True}})
    assert asked[-1]["choices"] == [] and asked[-1]["usage"] == USAGE
    # A client that set stream_options without usage: its choice stands, none is asked for.
    declined = _chat_events(server, {**body, "stream_options": {"include_usage": False}})
    assert all(e["choices"] for e in declined)
    # The SDK sees the text, and the tokens are counted by upstream and model.
    tee = _Tee()
    with sdk(server, tee) as client:
        stream = client.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == FAKE_TEXT
    # Three of the four calls had usage (not the one that declined it).
    prompt = 'outlast_relay_tokens_total{kind="prompt",model="fake-model",upstream="fake"}'
    line = f"{prompt} {3.0 * USAGE['prompt_tokens']}"
    wait_for(lambda: line in httpx.get(f"{server.url}/metrics").text.splitlines())


# -- upstream limits and rate-limit answers ---------------------------------------------------


def _relay_input(**headers: str) -> dict[str, Any]:
    return {
        "upstream": "fake",
        "path": CHAT,
        "method": "POST",
        "headers": headers,
        "body": {"model": "fake", "messages": MESSAGES, "stream": True},
    }


def test_a_429_with_retry_after_waits_without_spending_an_attempt(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = passthrough_server(server_factory, upstream)
    body = {"task": "relay", "input": _relay_input(**{"x-fake-429": "2"})}
    job = httpx.post(f"{server.url}/v1/jobs", json=body).json()

    def waiting() -> dict[str, Any] | None:
        found: dict[str, Any] = httpx.get(f"{server.url}/v1/jobs/{job['id']}").json()
        return found.get("waiting")

    seen = wait_for(waiting, timeout=30)
    assert seen["reason"] == "upstream_rate_limited" and seen["until"].endswith("Z")
    done = finished(server, job["id"])
    assert done["state"] == "succeeded" and done["attempt"] == 1, done
    assert "waiting" not in done
    first, *_, last = upstream.arrivals[CHAT]
    assert len(upstream.arrivals[CHAT]) == 3
    assert last - first >= 2.0  # two waits of Retry-After: 1
    waits = 'outlast_upstream_waits_total{reason="upstream_rate_limited",upstream="fake"} 2.0'
    assert waits in httpx.get(f"{server.url}/metrics").text.splitlines()


def test_rpm_spaces_the_relays_to_an_upstream(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = passthrough_server(server_factory, upstream, OUTLAST_UPSTREAMS__FAKE__RPM="60")
    ids = [
        httpx.post(f"{server.url}/v1/jobs", json={"task": "relay", "input": _relay_input()}).json()[
            "id"
        ]
        for _ in range(5)
    ]
    for job_id in ids:
        done = finished(server, job_id)
        assert done["state"] == "succeeded" and done["attempt"] == 1
    arrivals = sorted(upstream.arrivals[CHAT])
    assert len(arrivals) == 5
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # outlast grants a request every 1.1 s (60/rpm and its margin); what the upstream sees also
    # holds each request's travel time, which varies on a busy machine. Over the four gaps the
    # travel times cancel out but for the first and the last request, so the span holds the
    # limit with 0.4 s to spare, and no two requests come anywhere near together (without the
    # limit all five arrive within milliseconds).
    assert arrivals[-1] - arrivals[0] >= 4.0, gaps
    assert min(gaps) >= 0.5, gaps


def test_a_pass_through_to_a_limited_upstream_waits_for_a_429(
    server_factory: Callable[..., ServerProcess], upstream: Any
) -> None:
    server = passthrough_server(
        server_factory, upstream, OUTLAST_UPSTREAMS__FAKE__MAX_CONCURRENCY="4"
    )
    tee = _Tee()
    with sdk(server, tee, max_retries=0) as client:
        stream = client.chat.completions.create(
            model="fake", messages=MESSAGES, stream=True, extra_headers={"x-fake-429": "1"}
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == FAKE_TEXT and tee.requests == 1
    assert upstream.requests[CHAT] == 2

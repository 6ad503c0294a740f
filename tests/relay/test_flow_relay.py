"""Relays and flow control (docs/flow-control.md): the relay queue's slots, and retries that do
not multiply between outlast and an SDK that retries by itself."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ServerProcess, wait_for
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

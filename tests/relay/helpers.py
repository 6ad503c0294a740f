"""What the relay tests share: a server that reaches the fake upstream with short timeouts, and
ways to submit a relay and read what it stored."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import ServerProcess, upstream_env

FAST = {
    "OUTLAST_JOBS__BACKOFF_BASE": "0.01",
    "OUTLAST_RELAY__FIRST_BYTE_TIMEOUT": "1",
    "OUTLAST_RELAY__IDLE_TIMEOUT": "1",
    "OUTLAST_RELAY__MAX_LINE_BYTES": "65536",
}


def relay_server(factory: Callable[..., ServerProcess], fake: Any, **extra: str) -> ServerProcess:
    return factory(env={**upstream_env(fake), **FAST, **extra}).start()


def submit(server: ServerProcess, path: str, **fields: Any) -> str:
    body = {"task": "relay", "input": {"upstream": "fake", "path": path, "method": "GET"}, **fields}
    resp = httpx.post(f"{server.url}/v1/jobs", json=body)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["id"])


def finished(server: ServerProcess, job_id: str) -> dict[str, Any]:
    resp = httpx.get(f"{server.url}/v1/jobs/{job_id}", params={"wait": 30}, timeout=40)
    job: dict[str, Any] = resp.json()
    assert job["state"] in ("succeeded", "failed", "cancelled"), job
    return job


def all_messages(server: ServerProcess, job_id: str) -> list[dict[str, Any]]:
    """Every message of the job's stream, read in catch-up pages to its current end."""
    messages: list[dict[str, Any]] = []
    offset = "-1"
    while True:
        resp = httpx.get(f"{server.url}/v1/stream/jobs/{job_id}", params={"offset": offset})
        assert resp.status_code == 200
        messages += resp.json()
        offset = resp.headers["stream-next-offset"]
        if resp.headers.get("stream-up-to-date") == "true":
            return messages


def stored_events(server: ServerProcess, job_id: str) -> list[dict[str, Any]]:
    return [m for m in all_messages(server, job_id) if m["type"] == "event"]

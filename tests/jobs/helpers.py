"""Small helpers shared by the jobs tests: submit, wait, read a job's stream and SSE view."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import InProcessServer, ServerProcess, wait_for

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def _http(server: ServerProcess | InProcessServer) -> Any:
    """What sends requests to *server*: httpx for a real process, its client for an app run in
    this process (which takes the same absolute ``server.url`` URLs)."""
    return server.client if isinstance(server, InProcessServer) else httpx


def submit(
    server: ServerProcess | InProcessServer, task: str, status: int = 202, **fields: Any
) -> dict[str, Any]:
    """Submit a job and check the answer's status; returns the job."""
    resp = _http(server).post(f"{server.url}/v1/jobs", json={"task": task, **fields}, timeout=10)
    assert resp.status_code == status, resp.text
    job: dict[str, Any] = resp.json()
    if status == 202:
        assert resp.headers["Location"] == f"/v1/jobs/{job['id']}"
    return job


def get_job(server: ServerProcess, job_id: str) -> dict[str, Any]:
    resp = httpx.get(f"{server.url}/v1/jobs/{job_id}", timeout=10)
    assert resp.status_code == 200, resp.text
    job: dict[str, Any] = resp.json()
    return job


def finished(
    server: ServerProcess | InProcessServer, job_id: str, timeout: float = 60
) -> dict[str, Any]:
    """Long-poll the job until it is terminal (``timeout`` is a guard, not an expectation)."""

    def terminal() -> dict[str, Any] | None:
        resp = _http(server).get(f"{server.url}/v1/jobs/{job_id}", params={"wait": 5}, timeout=15)
        assert resp.status_code == 200, resp.text
        job: dict[str, Any] = resp.json()
        return job if job["state"] in TERMINAL else None

    result: dict[str, Any] = wait_for(terminal, timeout=timeout)
    return result


def in_state(server: ServerProcess, job_id: str, state: str, timeout: float = 30) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        job = get_job(server, job_id)
        return job if job["state"] == state else None

    result: dict[str, Any] = wait_for(check, timeout=timeout)
    return result


def stream_messages(server: ServerProcess, job_id: str) -> list[dict[str, Any]]:
    """Every message of the job's durable stream (catch-up reads until up to date)."""
    messages: list[dict[str, Any]] = []
    offset = "-1"
    while True:
        resp = httpx.get(
            f"{server.url}/v1/stream/jobs/{job_id}", params={"offset": offset}, timeout=10
        )
        assert resp.status_code == 200, resp.text
        messages.extend(resp.json())
        offset = resp.headers["Stream-Next-Offset"]
        if resp.headers.get("Stream-Up-To-Date") == "true":
            return messages


def parse_sse(raw: str) -> list[dict[str, str]]:
    """Complete SSE events of *raw* (comments dropped), each as {"event", "data", "id"}."""
    events: list[dict[str, str]] = []
    for block in raw.split("\n\n"):
        fields: dict[str, str] = {}
        data: list[str] = []
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                data.append(value)
            else:
                fields[name] = value
        if data:
            fields["data"] = "\n".join(data)
            events.append(fields)
    return events


def sse_messages(events: list[dict[str, str]]) -> list[dict[str, Any]]:
    return [json.loads(e["data"]) for e in events]


def runs_of(runs: Path, job_id: str) -> list[str]:
    """What the test task recorded for this job: ``["start 1", "end 1", ...]``."""
    path = runs / job_id
    return path.read_text().splitlines() if path.exists() else []


def open_gate(runs: Path, gate: str) -> None:
    (runs / f"gate-{gate}").touch()


def metric(server: ServerProcess, name: str, **labels: str) -> float | None:
    """One sample of the server's /metrics (``None`` when absent)."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    # The exposition lists labels in name order.
    pairs = sorted(labels.items())
    want = "{" + ",".join(f'{k}="{v}"' for k, v in pairs) + "}" if labels else ""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        if sample == name + want:
            return float(value)
    return None

"""Redis at its ``maxmemory`` (policy ``noeviction``): outlast refuses new work with 503 and
loses nothing it accepted (docs/redis.md, "Memory")."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.conftest import RedisProcess, ServerProcess, free_port, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
# Each job and append carries this much, so that memory fills in a few hundred requests.
PAD = "x" * 8 * 1024
# Headroom given to outlast above what Redis uses at start.
HEADROOM = 6 * 1024 * 1024


def _refused(resp: httpx.Response) -> None:
    assert resp.status_code == 503, resp.text
    assert int(resp.headers["Retry-After"]) >= 1
    error = resp.json()["error"]
    assert error["code"] == "unavailable" and "memory" in error["message"]


def test_full_redis_refuses_new_work_and_keeps_what_it_accepted(
    redis_factory: Callable[[], RedisProcess], tmp_path: Path
) -> None:
    store = redis_factory()
    admin = redis.Redis(port=store.port)
    used = int(admin.info("memory")["used_memory"])
    admin.config_set("maxmemory", used + HEADROOM)
    assert admin.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTLAST_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    server = ServerProcess(
        store=store.url,
        port=free_port(),
        env=env,
        args=["--app", "tests.cli_app:app"],
        log_path=tmp_path / "server.log",
    ).start()
    try:
        base = server.url
        gate = tmp_path / "gate"
        # A job that runs through the whole episode: three events, the gate, three more.
        running = httpx.post(
            f"{base}/v1/jobs", json={"task": "steps", "input": {"gate": str(gate), "n": 3}}
        ).json()
        wait_for(lambda: _job(base, running["id"])["state"] == "running")
        headers = {"Content-Type": "text/plain"}
        assert httpx.put(f"{base}/v1/stream/fill", headers=headers).status_code == 201

        # Fill Redis with delayed jobs and appends until outlast refuses both, again and again
        # (near the limit, work that fits may still be accepted now and then).
        accepted: list[str] = []
        appended: list[bytes] = []
        refusals = 0
        with httpx.Client(base_url=base, timeout=10) as client:
            for n in range(5000):
                body = {"task": "echo", "input": {"pad": PAD, "n": n}, "delay": 3600}
                resp = client.post("/v1/jobs", json=body)
                if resp.status_code == 202:
                    accepted.append(resp.json()["id"])
                    refusals = 0
                else:
                    _refused(resp)
                    refusals += 1
                data = b"%d:%s;" % (n, PAD.encode())
                resp = client.post("/v1/stream/fill", headers=headers, content=data)
                if resp.status_code == 204:
                    appended.append(data)
                    refusals = 0
                else:
                    _refused(resp)
                    refusals += 1
                if refusals >= 10:
                    break
            assert refusals >= 10, "outlast never refused"
            assert len(accepted) > 100 and len(appended) > 100  # it did fill up
            batch = {"jobs": [{"task": "echo", "input": {"pad": PAD}}] * 3}
            _refused(client.post("/v1/jobs/batch", json=batch))

            # The job accepted before finishes: its events and outcome fit in what is kept.
            gate.touch()
            job = wait_for(lambda: _terminal(base, running["id"]), timeout=60)
            assert job["state"] == "succeeded", job
            messages = _messages(base, f"jobs/{running['id']}")
            steps = [m["data"]["step"] for m in messages if m["type"] == "output"]
            assert steps == list(range(6))

            # Nothing accepted is lost; no refused append was written.
            for job_id in accepted:
                assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"
            assert _stream(base, "fill") == b"".join(appended)

            # With memory again, new work is accepted.
            admin.config_set("maxmemory", 0)
            wait_for(
                lambda: (
                    client.post("/v1/jobs", json={"task": "echo", "input": {}}).status_code == 202
                )
            )
    finally:
        server.signal(signal.SIGKILL)
        assert server.proc is not None
        server.proc.wait(timeout=10)
        admin.close()


def _job(base: str, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = httpx.get(f"{base}/v1/jobs/{job_id}", timeout=10).json()
    return job


def _terminal(base: str, job_id: str) -> dict[str, Any] | None:
    job = _job(base, job_id)
    return job if job["state"] in ("succeeded", "failed", "cancelled") else None


def _bodies(base: str, name: str) -> list[bytes]:
    """Every catch-up read of the stream until up to date."""
    out: list[bytes] = []
    offset = "-1"
    while True:
        resp = httpx.get(f"{base}/v1/stream/{name}", params={"offset": offset}, timeout=10)
        assert resp.status_code == 200, resp.text
        out.append(resp.content)
        offset = resp.headers["Stream-Next-Offset"]
        if resp.headers.get("Stream-Up-To-Date") == "true":
            return out


def _stream(base: str, name: str) -> bytes:
    return b"".join(_bodies(base, name))


def _messages(base: str, name: str) -> list[dict[str, Any]]:
    return [m for body in _bodies(base, name) for m in json.loads(body)]

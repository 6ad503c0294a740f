"""Operations for jobs: Prometheus metrics (docs/operations.md#health-and-metrics) and
retention of terminal jobs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, wait_for
from tests.jobs.helpers import finished, in_state, metric, open_gate, stream_messages, submit

pytestmark = pytest.mark.slow


def test_metrics_count_jobs_by_state_queue_depth_running_attempts_and_latency(
    jobs_server_factory: Callable[..., ServerProcess], runs: Path
) -> None:
    server = jobs_server_factory(
        env={
            "OUTLAST_QUEUES__DEFAULT__CONCURRENCY": "2",
            "OUTLAST_QUEUES__DEFAULT__CAPACITY": "50",
        }
    ).start()
    ok = [submit(server, "echo", input={"i": i})["id"] for i in range(3)]
    failed = submit(server, "flaky", input={"failures": 5}, retries=1)["id"]
    for job_id in [*ok, failed]:
        finished(server, job_id)
    holding = [submit(server, "hold", input={"gate": "m"})["id"] for _ in range(2)]
    for job_id in holding:
        in_state(server, job_id, "running")
    waiting = [submit(server, "echo", input={}, delay=3600)["id"] for _ in range(4)]

    def m(name: str, **labels: str) -> float | None:
        return metric(server, name, **labels)

    def eventually(value: float, name: str, **labels: str) -> None:
        # Worker-side figures are recorded just after the store commit that a client sees.
        wait_for(lambda: m(name, **labels) == value, timeout=10)

    q = {"queue": "default"}
    assert m("outlast_jobs", **q, state="succeeded") == 3
    assert m("outlast_jobs", **q, state="failed") == 1
    assert m("outlast_jobs", **q, state="running") == 2
    assert m("outlast_jobs", **q, state="queued") == 4
    assert m("outlast_jobs", **q, state="cancelled") == 0
    assert m("outlast_queue_depth", **q) == 4
    assert m("outlast_queue_capacity", **q) == 50
    assert m("outlast_worker_jobs_running", **q) == 2
    assert m("outlast_jobs_submitted_total", **q, task="echo") == 7
    eventually(3, "outlast_job_attempts_total", **q, task="echo", outcome="succeeded")
    eventually(2, "outlast_job_attempts_total", **q, task="flaky", outcome="failed")
    eventually(2, "outlast_job_run_seconds_count", **q, task="flaky")
    eventually(3, "outlast_job_duration_seconds_count", **q, task="echo", state="succeeded")
    eventually(1, "outlast_job_duration_seconds_count", **q, task="flaky", state="failed")
    # Every attempt that started waited in the queue first.
    assert m("outlast_job_wait_seconds_count", **q) == 3 + 2 + 2

    open_gate(runs, "m")
    for job_id in holding:
        finished(server, job_id)
    httpx.post(f"{server.url}/v1/jobs/{waiting[0]}/cancel")
    assert m("outlast_jobs", **q, state="succeeded") == 5
    assert m("outlast_jobs", **q, state="cancelled") == 1
    assert m("outlast_queue_depth", **q) == 3
    eventually(0, "outlast_worker_jobs_running", **q)
    eventually(2, "outlast_job_duration_seconds_count", **q, task="hold", state="succeeded")
    assert m("outlast_job_duration_seconds_count", **q, task="echo", state="cancelled") == 1


def test_terminal_jobs_and_their_streams_are_removed_after_the_retention(
    jobs_server_factory: Callable[..., ServerProcess], runs: Path
) -> None:
    # About a second of retention (the setting is in days).
    server = jobs_server_factory(env={"OUTLAST_JOBS__RETENTION_DAYS": "0.00001"}).start()
    done = submit(server, "echo", input={})["id"]
    failed = submit(server, "flaky", input={"failures": 3}, retries=0)["id"]
    running = submit(server, "hold", input={"gate": "keep"})["id"]
    waiting = submit(server, "echo", input={}, delay=3600)["id"]
    assert finished(server, done)["state"] == "succeeded"
    assert finished(server, failed)["state"] == "failed"
    in_state(server, running, "running")

    def gone(job_id: str) -> bool:
        job = httpx.get(f"{server.url}/v1/jobs/{job_id}")
        stream = httpx.get(f"{server.url}/v1/stream/jobs/{job_id}", params={"offset": "-1"})
        return job.status_code == 404 and stream.status_code == 404

    wait_for(lambda: gone(done) and gone(failed), timeout=60)
    assert httpx.get(f"{server.url}/v1/jobs/{done}").json()["error"]["code"] == "job_not_found"
    # Jobs not yet terminal are kept whatever their age.
    assert in_state(server, running, "running")
    assert stream_messages(server, waiting)[0]["state"] == "queued"
    assert metric(server, "outlast_jobs", queue="default", state="succeeded") == 0
    open_gate(runs, "keep")
    assert finished(server, running)["state"] == "succeeded"


def test_values_that_are_not_json_fail_the_attempt_and_leave_a_readable_stream(
    jobs_server: ServerProcess,
) -> None:
    for task in ("emit_nan", "nan_result"):
        job = finished(jobs_server, submit(jobs_server, task, input={})["id"])
        assert job["state"] == "failed"
        assert job["error"]["code"] == "exception"
        messages = stream_messages(jobs_server, job["id"])
        assert messages[-1] == {"type": "state", "state": "failed", "attempt": 1}

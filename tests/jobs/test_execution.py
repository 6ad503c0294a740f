"""Execution on a real server: retries with backoff shown in order in the job's stream, hard
per-attempt timeouts, cancel (queued and running; async and plain ``def`` tasks), and leases
that a CPU-bound task does not lose."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, wait_for
from tests.jobs.helpers import (
    finished,
    get_job,
    in_state,
    open_gate,
    runs_of,
    stream_messages,
    submit,
)

pytestmark = pytest.mark.slow

BACKOFF_BASE = 0.05  # tests/jobs/conftest.py sets OUTLAST_JOBS__BACKOFF_BASE to this


def test_failed_attempts_are_retried_with_backoff_and_each_shows_in_order(
    jobs_server: ServerProcess, runs: Path
) -> None:
    job = submit(jobs_server, "flaky", input={"failures": 2}, retries=3)
    assert job["max_attempts"] == 4
    done = finished(jobs_server, job["id"])
    assert done["state"] == "succeeded", done
    assert done["attempt"] == 3
    assert done["result"] == {"attempt": 3}
    # The job's error is its outcome's: none. The failed attempts' errors are in its stream.
    assert done["error"] is None
    assert runs_of(runs, job["id"]) == ["start 1", "start 2", "start 3"]

    messages = stream_messages(jobs_server, job["id"])
    retry_in = [m.pop("retry_in") for m in messages if "retry_in" in m]
    errors = [m.pop("error") for m in messages if m["type"] == "error"]
    assert messages == [
        {"type": "state", "state": "queued", "attempt": 0},
        {"type": "state", "state": "running", "attempt": 1},
        {"type": "output", "data": {"attempt": 1}},
        {"type": "error", "attempt": 1},
        {"type": "state", "state": "queued", "attempt": 1},
        {"type": "state", "state": "running", "attempt": 2},
        {"type": "output", "data": {"attempt": 2}},
        {"type": "error", "attempt": 2},
        {"type": "state", "state": "queued", "attempt": 2},
        {"type": "state", "state": "running", "attempt": 3},
        {"type": "output", "data": {"attempt": 3}},
        {"type": "result", "result": {"attempt": 3}},
        {"type": "state", "state": "succeeded", "attempt": 3},
    ]
    for attempt, error in enumerate(errors, start=1):
        assert error["code"] == "exception"
        assert f"attempt {attempt} fails on purpose" in error["message"]
    # Exponential backoff with jitter: retry n waits base * 2^(n-1) times 0.5 to 1.
    for n, wait in enumerate(retry_in, start=1):
        full = BACKOFF_BASE * 2 ** (n - 1)
        assert full * 0.5 - 0.001 <= wait <= full + 0.001, (n, wait)


def test_a_job_that_keeps_failing_ends_failed_after_its_last_attempt(
    jobs_server: ServerProcess, runs: Path
) -> None:
    job = submit(jobs_server, "flaky", input={"failures": 10}, retries=1)
    done = finished(jobs_server, job["id"])
    assert done["state"] == "failed"
    assert done["attempt"] == 2 == done["max_attempts"]
    assert done["error"]["code"] == "exception"
    assert "attempt 2 fails on purpose" in done["error"]["message"]
    assert runs_of(runs, job["id"]) == ["start 1", "start 2"]
    last = stream_messages(jobs_server, job["id"])[-2:]
    assert last[0]["type"] == "error" and last[0]["attempt"] == 2
    assert last[1] == {"type": "state", "state": "failed", "attempt": 2}


@pytest.mark.parametrize("task", ["hold", "hold_sync"])
def test_timeout_is_a_hard_limit_per_attempt(
    jobs_server: ServerProcess, runs: Path, task: str
) -> None:
    job = submit(jobs_server, task, input={}, timeout=0.5, retries=1)
    done = finished(jobs_server, job["id"])
    assert done["state"] == "failed"
    assert done["attempt"] == 2
    assert done["error"]["code"] == "timeout"
    assert "0.5 s" in done["error"]["message"]
    # Each attempt was stopped: the async task saw CancelledError, the sync one job.cancelled.
    wait_for(lambda: runs_of(runs, job["id"]).count("cancelled 2") == 1, timeout=10)
    assert runs_of(runs, job["id"]) == ["start 1", "cancelled 1", "start 2", "cancelled 2"]
    errors = [m for m in stream_messages(jobs_server, job["id"]) if m["type"] == "error"]
    assert [e["error"]["code"] for e in errors] == ["timeout", "timeout"]


def test_cancel_a_queued_job_at_once(jobs_server: ServerProcess, runs: Path) -> None:
    job = submit(jobs_server, "hold", input={}, delay=3600)
    resp = httpx.post(f"{jobs_server.url}/v1/jobs/{job['id']}/cancel")
    assert resp.status_code == 202
    cancelled = resp.json()
    assert cancelled["state"] == "cancelled"
    assert cancelled["error"]["code"] == "cancelled"
    assert cancelled["finished_at"] is not None
    # Idempotent: cancelling again returns the job as it is.
    again = httpx.post(f"{jobs_server.url}/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 202 and again.json() == cancelled
    assert stream_messages(jobs_server, job["id"]) == [
        {"type": "state", "state": "queued", "attempt": 0},
        {"type": "state", "state": "cancelled", "attempt": 0},
    ]
    head = httpx.head(f"{jobs_server.url}/v1/stream/jobs/{job['id']}")
    assert head.headers["Stream-Closed"] == "true"
    assert runs_of(runs, job["id"]) == []  # it never ran


@pytest.mark.parametrize("task", ["hold", "hold_sync"])
def test_cancel_a_running_job(jobs_server: ServerProcess, runs: Path, task: str) -> None:
    job = submit(jobs_server, task, input={})
    wait_for(lambda: runs_of(runs, job["id"]) == ["start 1"], timeout=30)
    asked = time.monotonic()
    resp = httpx.post(f"{jobs_server.url}/v1/jobs/{job['id']}/cancel")
    assert resp.status_code == 202
    done = finished(jobs_server, job["id"])
    took = time.monotonic() - asked
    print(f"{task}: cancelled {took:.3f} s after the request")
    assert done["state"] == "cancelled"
    assert done["error"]["code"] == "cancelled"
    # The task itself saw it: CancelledError (async) or job.cancelled (sync).
    wait_for(lambda: "cancelled 1" in runs_of(runs, job["id"]), timeout=10)
    assert runs_of(runs, job["id"]) == ["start 1", "cancelled 1"]
    assert stream_messages(jobs_server, job["id"])[-1] == {
        "type": "state",
        "state": "cancelled",
        "attempt": 1,
    }
    # A terminal job is returned as it is.
    again = httpx.post(f"{jobs_server.url}/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 202 and again.json()["state"] == "cancelled"


def test_cancel_reaches_a_job_running_in_another_process(
    jobs_server_factory: Callable[..., ServerProcess], runs: Path
) -> None:
    """The API node has no workers; the job runs on a second node sharing the store, which
    learns of the cancel through its lease heartbeat."""
    api = jobs_server_factory(args=["--no-jobs"]).start()
    worker = jobs_server_factory(store=api.store).start()
    job = submit(api, "hold", input={})
    wait_for(lambda: runs_of(runs, job["id"]) == ["start 1"], timeout=30)
    resp = httpx.post(f"{api.url}/v1/jobs/{job['id']}/cancel")
    assert resp.status_code == 202
    done = finished(api, job["id"])
    assert done["state"] == "cancelled"
    wait_for(lambda: "cancelled 1" in runs_of(runs, job["id"]), timeout=10)
    assert get_job(worker, job["id"])["state"] == "cancelled"


def test_a_cpu_bound_sync_task_keeps_its_lease(
    jobs_server_factory: Callable[..., ServerProcess], runs: Path
) -> None:
    """A plain ``def`` that never yields runs for several leases: the heartbeat, outside the
    task, keeps renewing, so the job is not recovered and run a second time."""
    server = jobs_server_factory(env={"OUTLAST_JOBS__LEASE": "2"}).start()
    job = submit(server, "spin", input={"seconds": 5})
    done = finished(server, job["id"])
    assert done["state"] == "succeeded", done
    assert done["attempt"] == 1
    assert runs_of(runs, job["id"]) == ["start 1", "end 1"]
    states = [m for m in stream_messages(server, job["id"]) if m["type"] == "state"]
    assert [s["state"] for s in states] == ["queued", "running", "succeeded"]


def test_each_queue_runs_at_most_its_concurrency(
    jobs_server_factory: Callable[..., ServerProcess], runs: Path
) -> None:
    server = jobs_server_factory(env={"OUTLAST_QUEUES__DEFAULT__CONCURRENCY": "3"}).start()
    jobs = [submit(server, "hold", input={"gate": "go"})["id"] for _ in range(6)]
    wait_for(lambda: sum(bool(runs_of(runs, j)) for j in jobs) == 3, timeout=30)
    states = [get_job(server, j)["state"] for j in jobs]
    assert sorted(states) == ["queued"] * 3 + ["running"] * 3
    open_gate(runs, "go")
    assert all(finished(server, j)["state"] == "succeeded" for j in jobs)
    assert all(runs_of(runs, j) == ["start 1", "end 1"] for j in jobs)


def test_state_of_a_running_job(jobs_server: ServerProcess, runs: Path) -> None:
    job = submit(jobs_server, "hold", input={"gate": "g"})
    running = in_state(jobs_server, job["id"], "running")
    assert running["attempt"] == 1 and running["started_at"] is not None
    open_gate(runs, "g")
    assert finished(jobs_server, job["id"])["result"] == {"gate": "g"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_child_process_runs_to_its_end(jobs_server: ServerProcess) -> None:
    done = finished(jobs_server, submit(jobs_server, "child", input={"seconds": 0})["id"])
    assert done["state"] == "succeeded", done
    assert done["result"] == {"code": 0, "out": "slept"}


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_a_child_process_is_killed_with_its_job(
    jobs_server: ServerProcess, runs: Path, how: str
) -> None:
    fields = {"timeout": 1.0} if how == "timeout" else {}
    job = submit(jobs_server, "child", input={"seconds": 300}, **fields)
    pid_file = runs / f"pid-{job['id']}"
    wait_for(lambda: pid_file.exists() and pid_file.read_text(), timeout=30)
    pid = int(pid_file.read_text())
    assert _alive(pid)
    if how == "cancel":
        assert httpx.post(f"{jobs_server.url}/v1/jobs/{job['id']}/cancel").status_code == 202
    done = finished(jobs_server, job["id"])
    assert done["state"] == ("cancelled" if how == "cancel" else "failed")
    # Killed and reaped by the server: no process (and no zombie) is left.
    wait_for(lambda: not _alive(pid), timeout=10)
    assert runs_of(runs, job["id"]) == ["start 1", "cancelled 1"]


def _running(pid: int) -> bool:
    """Whether *pid* is a live process. A zombie is dead: an orphan killed here is reaped by
    whichever process adopted it, which may take its time (or never, as PID 1 of a container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


@pytest.mark.parametrize("how", ["cancel", "timeout", "shutdown"])
def test_what_a_child_process_started_is_killed_with_its_job(
    jobs_server_factory: Callable[..., ServerProcess], runs: Path, how: str
) -> None:
    server = jobs_server_factory(args=["--grace", "0"]).start()
    fields = {"timeout": 1.0} if how == "timeout" else {}
    job = submit(server, "grandchild", **fields)
    pid_file = runs / f"grandchild-{job['id']}"
    wait_for(pid_file.exists, timeout=30)
    pid = int(pid_file.read_text())
    assert _running(pid)
    if how == "cancel":
        assert httpx.post(f"{server.url}/v1/jobs/{job['id']}/cancel").status_code == 202
        assert finished(server, job["id"])["state"] == "cancelled"
    elif how == "timeout":
        assert finished(server, job["id"])["state"] == "failed"
    else:
        server.signal(signal.SIGTERM)
        assert server.wait_exit(timeout=30) == 0
    # The whole process group goes: the shell and the sleep it started.
    wait_for(lambda: not _running(pid), timeout=10)
    assert runs_of(runs, job["id"]) == ["start 1", "cancelled 1"]

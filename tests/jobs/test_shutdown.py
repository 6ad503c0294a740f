"""Shutdown and recovery (docs/operations.md#shutdown) with real signals on real server processes:
drain, readers ended cleanly, the grace period, hand-back without spending an attempt, the
second signal, and ``kill -9`` recovered on the next start."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, wait_for
from tests.jobs.conftest import WorkerProcess
from tests.jobs.helpers import (
    finished,
    get_job,
    in_state,
    metric,
    open_gate,
    parse_sse,
    runs_of,
    sse_messages,
    stream_messages,
    submit,
)

# Job submissions are JSON bodies; any other type is refused (415).
JSON = {"Content-Type": "application/json"}

pytestmark = pytest.mark.slow


def _signalled(server: ServerProcess) -> bool:
    return "signal SIGTERM: shutting down" in server.log()


def _refused(server: ServerProcess) -> bool:
    try:
        httpx.get(f"{server.url}/healthz", timeout=2)
    except httpx.ConnectError:
        return True
    return False


def test_sigterm_drains_refuses_new_work_and_lets_running_jobs_finish(
    jobs_server_factory: Callable[..., ServerProcess], runs: Path
) -> None:
    server = jobs_server_factory(env={"OUTLAST_QUEUES__DEFAULT__CONCURRENCY": "1"}).start()
    running = submit(server, "hold", input={"gate": "finish"})
    waiting = submit(server, "work", input={"ms": 10})
    wait_for(lambda: runs_of(runs, running["id"]) == ["start 1"], timeout=30)

    # A live reader of the running job's events.
    reader_text: list[str] = []

    def read_events() -> None:
        with (
            httpx.Client(timeout=httpx.Timeout(10, read=120)) as client,
            client.stream("GET", f"{server.url}/v1/jobs/{running['id']}/events") as resp,
        ):
            reader_text.append("".join(resp.iter_text()))

    reader = threading.Thread(target=read_events)
    reader.start()

    # A submission whose body is still arriving when the signal comes.
    rest_of_body = threading.Event()
    answers: list[httpx.Response] = []

    def slow_body() -> Iterator[bytes]:
        yield b'{"task": "echo", '
        rest_of_body.wait(timeout=30)
        yield b'"input": {}}'

    def slow_submit() -> None:
        with httpx.Client(timeout=30) as client:
            answers.append(client.post(f"{server.url}/v1/jobs", content=slow_body(), headers=JSON))

    submitter = threading.Thread(target=slow_submit)
    submitter.start()
    wait_for(lambda: metric(server, "outlast_stream_readers", mode="job-events") == 1)
    wait_for(
        lambda: (
            metric(server, "outlast_http_requests_in_progress", method="POST", route="/v1/jobs")
            == 1
        )
    )

    server.signal(signal.SIGTERM)
    wait_for(lambda: _signalled(server), timeout=10)
    # Phase 3: the live reader ends (cleanly) while the job still runs.
    reader.join(timeout=30)
    assert not reader.is_alive()
    # Phase 1: a submission arriving now is refused with 503 and Retry-After.
    rest_of_body.set()
    submitter.join(timeout=30)
    assert [r.status_code for r in answers] == [503]
    assert int(answers[0].headers["Retry-After"]) >= 1
    assert answers[0].json()["error"]["code"] == "draining"
    # Phase 2: the listener is closed, no new connections.
    wait_for(lambda: _refused(server), timeout=10)

    # Phase 4: the running job may finish within the grace period; nothing new is claimed.
    assert server.proc is not None and server.proc.poll() is None
    open_gate(runs, "finish")
    assert server.wait_exit(timeout=60) == 0
    assert runs_of(runs, running["id"]) == ["start 1", "end 1"]
    assert runs_of(runs, waiting["id"]) == []

    server.start()
    assert get_job(server, running["id"])["state"] == "succeeded"
    # The reader resumes from its last event and misses nothing.
    before = parse_sse(reader_text[0])
    assert before, reader_text
    rest = httpx.get(
        f"{server.url}/v1/jobs/{running['id']}/events",
        headers={"Last-Event-ID": before[-1]["id"]},
        timeout=30,
    )
    assert sse_messages(before + parse_sse(rest.text)) == stream_messages(server, running["id"])
    # The job left waiting runs after the restart; the refused one never existed.
    assert finished(server, waiting["id"])["state"] == "succeeded"
    listed = httpx.get(f"{server.url}/v1/jobs").json()["jobs"]
    assert {j["id"] for j in listed} == {running["id"], waiting["id"]}
    assert "grace over" not in server.log()


def test_jobs_running_at_the_grace_deadline_are_handed_back_without_spending_an_attempt(
    jobs_server_factory: Callable[..., ServerProcess], runs: Path
) -> None:
    server = jobs_server_factory(args=["--grace", "1"]).start()
    jobs = [
        submit(server, "hold", input={"gate": "later"}),
        submit(server, "hold_sync", input={"gate": "later"}),
    ]
    for job in jobs:
        assert job["max_attempts"] == 1  # no retries: a spent attempt would fail the job
        wait_for(lambda job=job: runs_of(runs, job["id"]) == ["start 1"], timeout=30)

    server.signal(signal.SIGTERM)
    assert server.wait_exit(timeout=60) == 0
    assert "handing 2 running jobs back" in server.log()
    for job in jobs:
        # Stopped at the deadline: the task saw it (CancelledError, or job.cancelled).
        wait_for(lambda job=job: "cancelled 1" in runs_of(runs, job["id"]), timeout=10)

    open_gate(runs, "later")
    server.start()
    for job in jobs:
        done = finished(server, job["id"])
        assert done["state"] == "succeeded", done
        assert done["attempt"] == 1 == done["max_attempts"]
        assert runs_of(runs, job["id"]) == ["start 1", "cancelled 1", "start 1", "end 1"]
        assert stream_messages(server, job["id"]) == [
            {"type": "state", "state": "queued", "attempt": 0},
            {"type": "state", "state": "running", "attempt": 1},
            {"type": "state", "state": "queued", "attempt": 0, "reason": "handed_back"},
            {"type": "state", "state": "running", "attempt": 1},
            {"type": "result", "result": {"gate": "later"}},
            {"type": "state", "state": "succeeded", "attempt": 1},
        ]


def test_a_second_signal_stops_at_once(
    jobs_server_factory: Callable[..., ServerProcess], runs: Path
) -> None:
    """Grace is long, a request is still in flight, and one task is a CPU-bound thread that
    ignores cancellation: the second signal still ends the process at once, handing both jobs
    back."""
    server = jobs_server_factory(args=["--grace", "300"]).start()
    jobs = [
        submit(server, "hold", input={}),
        submit(server, "spin", input={"seconds": 120}),
    ]
    for job in jobs:
        wait_for(lambda job=job: runs_of(runs, job["id"]) == ["start 1"], timeout=30)
    # A request that never completes: phase 2 would wait for it.
    never = threading.Event()

    def endless_body() -> Iterator[bytes]:
        yield b'{"task": '
        never.wait(timeout=120)
        yield b'"echo"}'

    def endless_submit() -> None:
        with contextlib.suppress(httpx.TransportError), httpx.Client(timeout=130) as client:
            client.post(f"{server.url}/v1/jobs", content=endless_body(), headers=JSON)

    submitter = threading.Thread(target=endless_submit, daemon=True)
    submitter.start()
    in_flight = {"method": "POST", "route": "/v1/jobs"}
    wait_for(lambda: metric(server, "outlast_http_requests_in_progress", **in_flight) == 1)

    server.signal(signal.SIGTERM)
    wait_for(lambda: _signalled(server), timeout=10)
    server.signal(signal.SIGTERM)
    # The guard is far below the grace (300 s), the request (120 s) and the spinning task.
    assert server.wait_exit(timeout=60) == 0
    assert "second signal" in server.log()
    never.set()

    # Restart without workers: the jobs wait in their queue, no attempt spent.
    server.args = [*server.args, "--no-jobs"]
    server.start()
    for job in jobs:
        queued = get_job(server, job["id"])
        assert queued["state"] == "queued"
        assert queued["attempt"] == 0
        assert stream_messages(server, job["id"])[-1] == {
            "type": "state",
            "state": "queued",
            "attempt": 0,
            "reason": "handed_back",
        }


def test_kill_9_mid_run_every_accepted_job_is_recovered(
    jobs_server_factory: Callable[..., ServerProcess], runs: Path
) -> None:
    lease = {"OUTLAST_JOBS__LEASE": "2"}
    server = jobs_server_factory(env=lease).start()
    ids = [submit(server, "work", input={"ms": 100 + 20 * (i % 10)})["id"] for i in range(60)]
    # Kill once some jobs finished and others are running.
    wait_for(lambda: sum("end 1" in runs_of(runs, j) for j in ids) >= 10, timeout=60)
    server.signal(signal.SIGKILL)
    server.wait_exit(timeout=30)
    interrupted = [j for j in ids if runs_of(runs, j) == ["start 1"]]
    assert interrupted, "some jobs were running at the kill"

    server.env.update(lease)
    server.start()
    for job_id in ids:
        done = finished(server, job_id)
        assert done["state"] == "succeeded", done
    for job_id in interrupted:
        # At-least-once: the interrupted attempt counts, and the job ran again.
        done = get_job(server, job_id)
        assert done["attempt"] == 2
        lines = runs_of(runs, job_id)
        assert lines == ["start 1", "start 2", "end 2"], lines
        states = [m for m in stream_messages(server, job_id) if m["type"] == "state"]
        assert {"type": "state", "state": "queued", "attempt": 1, "reason": "lease_expired"} in (
            states
        )
    # Nothing lost, nothing stuck.
    listed = httpx.get(f"{server.url}/v1/jobs", params={"limit": 500}).json()["jobs"]
    assert sorted(j["id"] for j in listed) == sorted(ids)
    assert {j["state"] for j in listed} == {"succeeded"}
    assert in_state(server, ids[0], "succeeded")


def test_a_worker_process_runs_jobs_and_drains_on_sigterm(
    jobs_server_factory: Callable[..., ServerProcess],
    worker_factory: Callable[..., WorkerProcess],
    runs: Path,
) -> None:
    api = jobs_server_factory(args=["--no-jobs"]).start()
    worker = worker_factory(api.store)
    assert worker.proc is not None
    done = finished(api, submit(api, "echo", input={"via": "worker"})["id"])
    assert done["result"] == {"via": "worker"}

    running = submit(api, "hold", input={"gate": "end"})
    wait_for(lambda: runs_of(runs, running["id"]) == ["start 1"], timeout=30)
    worker.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "signal SIGTERM: shutting down" in worker.log(), timeout=10)
    later = submit(api, "work", input={"ms": 1})  # the API still accepts; nobody claims it
    open_gate(runs, "end")
    assert worker.proc.wait(timeout=60) == 0
    assert finished(api, running["id"])["state"] == "succeeded"
    assert get_job(api, later["id"])["state"] == "queued"
    assert runs_of(runs, later["id"]) == []
    # Another worker picks it up.
    worker_factory(api.store)
    assert finished(api, later["id"])["state"] == "succeeded"

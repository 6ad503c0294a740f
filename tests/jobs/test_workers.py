"""``outlast serve --workers 2`` with real processes and real signals (docs/operations.md,
"Several processes: --workers"): a reader on one process follows appends made through the
other, admission stays exact, SIGTERM under load exits 0 with nothing lost, and a child killed
with ``kill -9`` is started again while its jobs are recovered.

Which process answers a request: ``/readyz`` names its pid. The kernel spreads connections over
the processes (SO_REUSEPORT), so a test opens one-connection clients until it holds one per
process, and keeps each connection for the requests it sends to that process.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, wait_for
from tests.jobs.helpers import finished, get_job

pytestmark = pytest.mark.slow

APP = "tests.jobs.pid_app:app"
TEXT = {"Content-Type": "text/plain"}


def _pid_of(client: httpx.Client, url: str) -> int | None:
    resp = client.get(f"{url}/readyz")
    return int(resp.json()["pid"]) if resp.status_code == 200 else None


@pytest.fixture
def clients() -> Iterator[Callable[[ServerProcess, int], dict[int, httpx.Client]]]:
    """``clients(server, n)``: one-connection clients to *n* different processes, by pid."""
    opened: list[httpx.Client] = []

    def by_pid(server: ServerProcess, n: int) -> dict[int, httpx.Client]:
        found: dict[int, httpx.Client] = {}

        def enough() -> bool:
            client = httpx.Client(limits=httpx.Limits(max_connections=1), timeout=30)
            opened.append(client)
            pid = _pid_of(client, server.url)
            if pid is not None and pid not in found:
                found[pid] = client
            return len(found) >= n

        # New connections until the processes (each starting on its own) all answered one.
        wait_for(enough, timeout=30)
        return found

    yield by_pid
    for client in opened:
        client.close()


TwoProcesses = Callable[..., tuple[ServerProcess, dict[int, httpx.Client]]]


@pytest.fixture
def two_processes(
    jobs_server_factory: Callable[..., ServerProcess],
    clients: Callable[[ServerProcess, int], dict[int, httpx.Client]],
) -> TwoProcesses:
    """``two_processes(env=..., args=...)``: a started ``serve --workers 2`` server of the test
    tasks, and a one-connection client to each of its two processes, by pid."""

    def start(
        env: dict[str, str] | None = None, args: list[str] | None = None
    ) -> tuple[ServerProcess, dict[int, httpx.Client]]:
        server = jobs_server_factory(
            env=env, args=["--app", APP, "--workers", "2", *(args or [])]
        ).start()
        return server, clients(server, 2)

    return start


def _stop(server: ServerProcess) -> int:
    server.signal(signal.SIGTERM)
    return server.wait_exit(timeout=60)


def test_a_reader_on_one_process_sees_appends_made_through_the_other(
    two_processes: TwoProcesses,
) -> None:
    server, by_pid = two_processes(env={"OUTLAST_STREAMS__LONG_POLL_TIMEOUT": "30"})
    reader, writer = by_pid.values()
    url = f"{server.url}/v1/stream/shared"
    assert writer.put(url, headers=TEXT).status_code == 201
    offset = reader.get(url, params={"offset": "-1"}).headers["Stream-Next-Offset"]
    received: list[str] = []

    def follow() -> None:
        # Long-polls on the reader's process, from offset to offset, until all three arrive.
        at = offset
        while len(received) < 3:
            resp = reader.get(url, params={"offset": at, "live": "long-poll"})
            assert resp.status_code in (200, 204), resp.text
            if resp.status_code == 200:
                received.extend(resp.text.split("|")[:-1])
            at = resp.headers["Stream-Next-Offset"]

    thread = threading.Thread(target=follow)
    thread.start()
    for i in range(3):
        assert writer.post(url, content=f"m{i}|", headers=TEXT).status_code == 204
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert received == ["m0", "m1", "m2"]
    assert _stop(server) == 0


def test_admission_never_overshoots_capacity_across_processes(
    two_processes: TwoProcesses,
) -> None:
    capacity = {"OUTLAST_QUEUES__DEFAULT__CAPACITY": "20"}
    server, _ = two_processes(env=capacity, args=["--no-jobs"])  # both processes are serving

    def submit_one(i: int) -> int:
        # A connection each: the kernel spreads them over both processes.
        with httpx.Client(timeout=30) as client:
            body = {"task": "echo", "input": {"i": i}}
            return client.post(f"{server.url}/v1/jobs", json=body).status_code

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(submit_one, range(200)))
    assert statuses.count(202) == 20
    assert statuses.count(429) == 180
    listed = httpx.get(f"{server.url}/v1/jobs", params={"limit": 500}, timeout=10).json()["jobs"]
    assert len(listed) == 20
    assert _stop(server) == 0


def test_sigterm_under_load_exits_0_with_every_accepted_job_finished_or_handed_back(
    two_processes: TwoProcesses,
) -> None:
    server, _ = two_processes()
    accepted: list[str] = []
    lock = threading.Lock()
    refused = threading.Event()

    def produce() -> None:
        with httpx.Client(timeout=30) as client:
            while not refused.is_set():
                try:
                    resp = client.post(
                        f"{server.url}/v1/jobs", json={"task": "pid_work", "input": {"ms": 50}}
                    )
                except httpx.TransportError:
                    refused.set()  # the listener closed: shutting down
                    return
                if resp.status_code != 202:
                    assert resp.status_code == 503, resp.text  # draining
                    refused.set()
                    return
                with lock:
                    accepted.append(resp.json()["id"])

    producers = [threading.Thread(target=produce) for _ in range(8)]
    for thread in producers:
        thread.start()
    wait_for(lambda: len(accepted) >= 100, timeout=60)
    assert _stop(server) == 0
    for thread in producers:
        thread.join(timeout=60)
    assert refused.is_set()

    # Every accepted job either finished, or was handed back and runs after the restart.
    server.start()
    for job_id in accepted:
        assert finished(server, job_id)["state"] == "succeeded"
    assert _stop(server) == 0


def test_a_child_killed_with_kill_9_is_restarted_and_its_jobs_are_recovered(
    two_processes: TwoProcesses, runs: Path
) -> None:
    server, by_pid = two_processes(env={"OUTLAST_JOBS__LEASE": "2"})
    pids = set(by_pid)
    # Sixteen jobs, eight slots per process: each process runs eight of them.
    ids = []
    for _ in range(16):
        resp = httpx.post(
            f"{server.url}/v1/jobs", json={"task": "pid_work", "input": {"ms": 3000}}, timeout=10
        )
        assert resp.status_code == 202, resp.text
        ids.append(resp.json()["id"])

    def started_by() -> dict[str, int] | None:
        firsts = {}
        for job_id in ids:
            path = runs / job_id
            lines = path.read_text().splitlines() if path.exists() else []
            if not lines:
                return None
            firsts[job_id] = int(lines[0].split()[2])
        return firsts

    first_runs: dict[str, int] = wait_for(started_by, timeout=30)
    assert set(first_runs.values()) == pids
    victim = next(iter(pids))
    killed = [job_id for job_id, pid in first_runs.items() if pid == victim]
    os.kill(victim, signal.SIGKILL)

    # The parent starts the process again; it serves the port beside the other.
    wait_for(lambda: "exited unexpectedly" in server.log(), timeout=30)
    assert server.proc is not None and server.proc.poll() is None

    def new_pid() -> bool:
        with httpx.Client(timeout=10) as client:
            pid = _pid_of(client, server.url)
        return pid is not None and pid not in pids

    wait_for(new_pid, timeout=30)
    for job_id in ids:
        done = finished(server, job_id)
        assert done["state"] == "succeeded", done
    for job_id in killed:
        # At-least-once: the killed attempt counts; its lease expired and the job ran again.
        assert get_job(server, job_id)["attempt"] == 2
        lines = (runs / job_id).read_text().splitlines()
        assert lines[0] == f"start 1 {victim}" and lines[-1].startswith("end 2 "), lines
    assert _stop(server) == 0

"""Load with a SIGTERM in the middle: several clients keep submitting through a graceful
restart; every job that got a 2xx succeeds, and no task body runs twice."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess, wait_for
from tests.jobs.helpers import TERMINAL, finished, runs_of

pytestmark = pytest.mark.slow

JOBS = 300
CLIENTS = 4
# Each client keeps this many of its jobs unfinished: submissions go on for the whole run.
OUTSTANDING = 8
# A client whose request failed (server restarting) tries again after this pause.
CLIENT_RETRY_PAUSE = 0.05
CLIENT_DEADLINE = 180.0


def _ms(i: int) -> int:
    """Task durations spread over 20-300 ms."""
    return 20 + (i * 37) % 281


class Client(threading.Thread):
    """Submits its share of the jobs, each with its own idempotency key, retrying through the
    restart until it gets a 2xx: a retried submission that was in fact admitted gets a 200
    with the same job, never a second one."""

    def __init__(self, url: str, numbers: list[int]) -> None:
        super().__init__()
        self.url = url
        self.numbers = numbers
        self.accepted: dict[int, str] = {}
        self.statuses: list[int] = []
        self.error: BaseException | None = None
        self.refused = 0

    def run(self) -> None:
        try:
            self._work()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _request(
        self, client: httpx.Client, method: str, path: str, **kw: object
    ) -> httpx.Response:
        deadline = time.monotonic() + CLIENT_DEADLINE
        while True:
            try:
                resp = client.request(method, f"{self.url}{path}", **kw)  # type: ignore[arg-type]
            except httpx.TransportError:
                self.refused += 1
                resp = None
            if resp is not None:
                self.statuses.append(resp.status_code)
                if resp.status_code < 500:
                    return resp
            assert time.monotonic() < deadline, "the server never came back"
            time.sleep(CLIENT_RETRY_PAUSE)

    def _work(self) -> None:
        outstanding: list[str] = []
        with httpx.Client(timeout=30) as client:
            for i in self.numbers:
                body = {"task": "work", "input": {"ms": _ms(i)}, "key": f"load-{i}"}
                resp = self._request(client, "POST", "/v1/jobs", json=body)
                assert resp.status_code in (200, 202), resp.text
                self.accepted[i] = resp.json()["id"]
                outstanding.append(self.accepted[i])
                while len(outstanding) >= OUTSTANDING:
                    job = self._request(
                        client, "GET", f"/v1/jobs/{outstanding[0]}", params={"wait": 5}
                    ).json()
                    if job["state"] in TERMINAL:
                        outstanding.pop(0)


def test_load_with_sigterm_midway_loses_nothing_and_runs_nothing_twice(
    jobs_server_factory: Callable[..., ServerProcess], runs: Path
) -> None:
    server = jobs_server_factory(env={"OUTLAST_QUEUES__DEFAULT__CONCURRENCY": "8"}).start()
    clients = [Client(server.url, list(range(c, JOBS, CLIENTS))) for c in range(CLIENTS)]
    for client in clients:
        client.start()

    def ended() -> int:
        return sum(1 for p in runs.iterdir() if "end 1" in p.read_text())

    wait_for(lambda: ended() >= JOBS // 3, timeout=120)
    server.signal(signal.SIGTERM)
    assert server.wait_exit(timeout=60) == 0
    at_stop = ended()
    submitted_at_stop = sum(len(c.accepted) for c in clients)
    assert at_stop < JOBS, "the signal came midway, not after the end"
    assert submitted_at_stop < JOBS, "clients were still submitting at the signal"
    # Every job running at the signal finished within the grace period: none handed back.
    assert "grace over" not in server.log()

    server.start()
    for client in clients:
        client.join(timeout=CLIENT_DEADLINE)
        assert not client.is_alive()
        assert client.error is None, client.error
    accepted = {i: job_id for c in clients for i, job_id in c.accepted.items()}
    assert sorted(accepted) == list(range(JOBS))
    assert len(set(accepted.values())) == JOBS  # one job per key
    # The clients did see the restart (refused connections or 503), and no other 5xx.
    statuses = [s for c in clients for s in c.statuses]
    assert set(statuses) <= {200, 202, 503}
    assert sum(c.refused for c in clients) + statuses.count(503) > 0

    for i, job_id in accepted.items():
        job = finished(server, job_id)
        assert job["state"] == "succeeded", job
        assert job["result"] == {"ms": _ms(i)}
        assert job["attempt"] == 1
        # No task body ran twice: nothing was interrupted at a grace deadline.
        assert runs_of(runs, job_id) == ["start 1", "end 1"], (job_id, runs_of(runs, job_id))
    listed = httpx.get(f"{server.url}/v1/jobs", params={"limit": 500}).json()["jobs"]
    assert len(listed) == JOBS
    print(f"at SIGTERM: {submitted_at_stop} of {JOBS} jobs submitted, {at_stop} finished")

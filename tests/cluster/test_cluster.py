"""Many outlast processes on one Redis: shared work, live reads across nodes, and what happens
when a node is killed, stopped, or Redis itself restarts. Real processes, real signals."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from tests.cluster.conftest import (
    Cluster,
    assert_one_node_at_a_time,
    submit,
    wait_terminal,
)
from tests.conftest import wait_for

pytestmark = pytest.mark.slow


def _submit_all(urls: list[str], count: int, ms: int) -> list[str]:
    """Submit *count* jobs round-robin over *urls*; every one must be accepted."""
    ids = []
    with httpx.Client(timeout=15) as client:
        for n in range(count):
            resp = submit(urls[n % len(urls)], client, input={"ms": ms, "n": n})
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["id"])
    return ids


def _running_on(c: Cluster, job_ids: list[str], node: str) -> list[str]:
    return [
        job_id
        for job_id in job_ids
        if any(r.node == node and r.end is None for r in c.runs(job_id))
    ]


def test_two_serve_nodes_and_a_worker_share_500_jobs(cluster: Callable[[], Cluster]) -> None:
    c = cluster()
    a, b = c.serve("a"), c.serve("b")
    c.worker("w")
    ids = _submit_all([a.url, b.url], 500, ms=10)
    final = wait_terminal(b.url, ids)
    assert {job["state"] for job in final.values()} == {"succeeded"}, c.logs()
    assert_one_node_at_a_time(c, ids)
    for job_id in ids:
        (run,) = c.runs(job_id)  # nothing went wrong: exactly one run each
        assert run.how == "end" and final[job_id]["result"]["node"] == run.node
    nodes = {c.runs(job_id)[0].node for job_id in ids}
    assert len(nodes) > 1, "one node ran everything: the others never woke up"


def test_a_stream_written_via_one_node_is_read_live_via_another(
    cluster: Callable[[], Cluster],
) -> None:
    c = cluster()
    a, b = c.serve("a"), c.serve("b")
    url_a, url_b = f"{a.url}/v1/stream/chat", f"{b.url}/v1/stream/chat"
    assert httpx.put(url_a, headers={"Content-Type": "text/plain"}).status_code == 201
    params = {"offset": "-1", "live": "sse"}
    with (
        httpx.Client(timeout=httpx.Timeout(15, read=15)) as client,
        client.stream("GET", url_b, params=params) as resp,
    ):
        assert resp.status_code == 200
        lines = resp.iter_lines()

        def next_data() -> str:
            """The next data event's text (control events and pings skipped)."""
            event = ""
            for line in lines:
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "data":
                    return line[5:]
            raise AssertionError("the SSE stream ended")

        def control_up_to_date() -> None:
            event = ""
            for line in lines:
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif (
                    line.startswith("data:")
                    and event == "control"
                    and json.loads(line[5:]).get("upToDate")
                ):
                    return
            raise AssertionError("the SSE stream ended")

        control_up_to_date()  # B is following, at the tail
        for word in ("one", "two", "three"):
            posted = httpx.post(url_a, content=word, headers={"Content-Type": "text/plain"})
            assert posted.status_code == 204
            assert next_data() == word  # arrives on B live, one append at a time


def test_kill_9_of_the_node_running_jobs(cluster: Callable[[], Cluster]) -> None:
    c = cluster()
    short_lease = {"OUTLAST_JOBS__LEASE": "1"}
    a = c.serve("a", env=short_lease)
    b = c.serve("b", env=short_lease, args=["--no-jobs"])
    ids = _submit_all([b.url], 24, ms=1000)
    # Kill A while it is in the middle of some of them.
    wait_for(lambda: _running_on(c, ids, "a"), timeout=30)
    a.signal(signal.SIGKILL)
    a.wait_exit()
    killed_at = time.time()
    running = _running_on(c, ids, "a")  # cut off by the kill
    assert running
    c.worker("w", env=short_lease)  # takes over once the dead node's leases expire
    final = wait_terminal(b.url, ids)
    assert {job["state"] for job in final.values()} == {"succeeded"}, c.logs()
    assert_one_node_at_a_time(c, ids)
    for job_id in running:
        runs = c.runs(job_id)
        cut = [r for r in runs if r.node == "a" and r.end is None]
        assert cut, runs
        (done,) = [r for r in runs if r.how == "end"]
        assert done.node == "w" and done.start > killed_at
        assert final[job_id]["attempt"] == done.attempt > cut[0].attempt


def test_sigterm_of_a_serve_node_and_a_worker_node_under_load(
    cluster: Callable[[], Cluster],
) -> None:
    c = cluster()
    a = c.serve("a", args=["--grace", "0.2"])
    b = c.serve("b")
    w = c.worker("w", args=["--grace", "0.2"])
    # Every slot of the three nodes busy (3 x 8), each job far longer than the grace (0.2 s):
    # the jobs running on the stopped nodes when the signal comes are stopped and handed back.
    ids = _submit_all([a.url, b.url], 24, ms=1500)
    wait_for(lambda: _running_on(c, ids, "a") and _running_on(c, ids, "w"), timeout=30)
    a.signal(signal.SIGTERM)
    w.signal(signal.SIGTERM)
    assert a.wait_exit() == 0 and w.wait_exit() == 0
    more = _submit_all([b.url], 20, ms=10)  # the other node carries on
    final = wait_terminal(b.url, ids + more)
    assert {job["state"] for job in final.values()} == {"succeeded"}, c.logs()
    assert_one_node_at_a_time(c, ids + more)
    handed_back = 0
    for job_id in ids:
        runs = c.runs(job_id)
        for run, later in zip(runs, [*runs[1:], None], strict=True):
            if run.node in ("a", "w"):
                assert run.how in ("end", "stop"), runs  # finished, or stopped and handed back
            if run.how == "stop":
                # Handed back at the grace deadline: the next run is the same attempt again.
                assert later is not None and later.attempt == run.attempt, runs
                handed_back += 1
    assert handed_back > 0


class Submitter(threading.Thread):
    """Submits jobs to one node until told to stop, recording every answer."""

    def __init__(self, url: str, stop: threading.Event) -> None:
        super().__init__()
        self.url = url
        self.stop = stop
        self.answers: list[tuple[float, int, dict[str, str]]] = []
        self.accepted: list[str] = []

    def run(self) -> None:
        with httpx.Client(timeout=15) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                resp = submit(self.url, client, input={"ms": 20, "n": n})
                self.answers.append((time.time(), resp.status_code, dict(resp.headers)))
                if resp.status_code == 202:
                    self.accepted.append(resp.json()["id"])
                elif resp.status_code == 503:
                    # The answer says when to come back; waiting so is the client's job.
                    self.stop.wait(min(0.2, float(resp.headers["Retry-After"])))


def test_redis_restart_during_load(cluster: Callable[[], Cluster]) -> None:
    c = cluster()
    # Jobs whose end could not be stored during the outage are recovered by lease expiry.
    lease = {"OUTLAST_JOBS__LEASE": "2"}
    a, b = c.serve("a", env=lease), c.serve("b", env=lease)
    c.worker("w", env=lease)
    stop = threading.Event()
    submitters = [Submitter(a.url, stop), Submitter(b.url, stop)]
    for s in submitters:
        s.start()
    try:
        wait_for(lambda: all(len(s.accepted) >= 20 for s in submitters), timeout=60)
        c.redis.stop(signal.SIGKILL)  # a crash: only the AOF (fsync always) survives
        down_at = time.time()
        wait_for(lambda: all(s.answers[-1][1] == 503 for s in submitters), timeout=30)
        c.redis.start()
        up_at = time.time()
        counts = [len(s.accepted) for s in submitters]
        # Both nodes accept again by themselves, then keep accepting.
        wait_for(
            lambda: all(len(s.accepted) >= n + 20 for s, n in zip(submitters, counts, strict=True)),
            timeout=60,
        )
        recovered_at = time.time()
        wait_for(lambda: all(s.answers[-1][0] > recovered_at for s in submitters), timeout=30)
    finally:
        stop.set()
        for s in submitters:
            s.join(timeout=30)
    answers = [a for s in submitters for a in s.answers]
    assert {status for _, status, _ in answers} == {202, 503}
    for at, status, headers in answers:
        if status == 503:
            assert "retry-after" in headers
            assert down_at - 15 < at < recovered_at  # only around the outage
    for s in submitters:  # once recovered, no more refusals
        assert all(st == 202 for at, st, _ in s.answers if at > recovered_at)
    assert up_at < recovered_at
    ids = [job_id for s in submitters for job_id in s.accepted]
    final = wait_terminal(a.url, ids)
    assert {job["state"] for job in final.values()} == {"succeeded"}, c.logs()
    assert_one_node_at_a_time(c, ids)
    assert "Traceback" not in c.logs(), c.logs()


def test_capacity_20_under_200_concurrent_submits_on_two_nodes(
    cluster: Callable[[], Cluster],
) -> None:
    c = cluster()
    capacity = {"OUTLAST_QUEUES__DEFAULT__CAPACITY": "20"}
    # No workers: nothing leaves the queue, so exactly the capacity can be admitted.
    a = c.serve("a", env=capacity, args=["--no-jobs"])
    b = c.serve("b", env=capacity, args=["--no-jobs"])

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{(a, b)[n % 2].url}/v1/jobs",
                        json={"task": "step", "input": {"ms": 1, "n": n}},
                    )
                    for n in range(200)
                )
            )

    answers = asyncio.run(burst())
    statuses = [r.status_code for r in answers]
    assert statuses.count(202) == 20, statuses
    assert statuses.count(429) == 180, statuses
    for resp in answers:
        if resp.status_code == 429:
            assert resp.json()["error"]["code"] == "queue_full"
            assert "Retry-After" in resp.headers
    queues = httpx.get(f"{a.url}/v1/queues").json()["queues"]
    assert [(q["name"], q["queued"]) for q in queues] == [("default", 20), ("relay", 0)]


def test_readers_during_a_redis_outage_get_503_or_an_end(cluster: Callable[[], Cluster]) -> None:
    c = cluster()
    a = c.serve("a")
    url = f"{a.url}/v1/stream/news"
    assert httpx.put(url, content=b"hello", headers={"Content-Type": "text/plain"}).is_success
    job = submit(a.url, input={"ms": 1}).json()
    wait_terminal(a.url, [job["id"]])
    with (
        httpx.Client(timeout=httpx.Timeout(15, read=15)) as client,
        client.stream("GET", url, params={"offset": "-1", "live": "sse"}) as live,
    ):
        assert live.status_code == 200
        lines = live.iter_lines()
        for line in lines:  # up to date: the reader now waits for more
            if line.startswith("data:") and '"upToDate": true' in line:
                break
        c.redis.stop(signal.SIGKILL)
        for _ in lines:  # the live reader ends (cleanly: the client resumes from its offset)
            pass
        # Reads answer from what the node holds in memory (committed data only), or 503.
        for params in ({"offset": "-1"}, {"offset": "-1", "live": "long-poll"}):
            resp = client.get(url, params=params)
            assert resp.status_code in (200, 204, 503), resp.text
            if resp.status_code == 503:
                assert "Retry-After" in resp.headers
            elif resp.status_code == 200:
                assert resp.content == b"hello"
        assert client.head(url).status_code in (200, 503)
        resp = client.get(f"{a.url}/v1/jobs/{job['id']}")
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "unavailable"
        resp = client.post(url, content=b"more", headers={"Content-Type": "text/plain"})
        assert resp.status_code == 503 and "Retry-After" in resp.headers
        c.redis.start()
        # Back by itself: what was acknowledged before the outage is all there.
        wait_for(lambda: client.get(url, params={"offset": "-1"}).status_code == 200, timeout=30)
        assert client.get(url, params={"offset": "-1"}).content == b"hello"
        assert client.get(f"{a.url}/v1/jobs/{job['id']}").json()["state"] == "succeeded"
    assert "Traceback" not in a.log(), a.log()

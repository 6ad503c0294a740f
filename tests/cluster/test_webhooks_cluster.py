"""Completion webhooks on two nodes sharing one Redis: every event delivered, and never two
attempts of one event at the same time (each node claims events with a lease)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.cluster.conftest import Cluster, submit
from tests.conftest import wait_for
from tests.fakes.receiver import SECRET, Answer, Received, Receiver

pytestmark = pytest.mark.slow

JOBS = 200


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver().start()
    yield made
    made.stop()


def test_two_nodes_deliver_200_events_one_attempt_at_a_time(
    cluster: Callable[[], Cluster], receiver: Receiver
) -> None:
    def answer(request: Received, earlier: int) -> Answer:
        n = json.loads(request.body)["data"]["input"]["n"]
        # Half of the first attempts fail; each answer takes a moment, so that two attempts of
        # one event in flight at once would overlap here.
        return Answer(500 if earlier == 0 and n % 2 else 200, delay=0.02)

    receiver.script = answer
    env = {
        "OUTLAST_WEBHOOKS__SECRET": SECRET,
        "OUTLAST_WEBHOOKS__ALLOWED_HOSTS": '["127.0.0.1"]',
        "OUTLAST_WEBHOOKS__ALLOW_PRIVATE": "true",
        "OUTLAST_WEBHOOKS__BACKOFF_SCALE": "0.1",
    }
    c = cluster()
    a, b = c.serve("a", env), c.serve("b", env)
    ids = []
    with httpx.Client(timeout=15) as client:
        for n in range(JOBS):
            url = (a, b)[n % 2].url
            resp = submit(url, client, input={"ms": 1, "n": n}, callback=f"{receiver.url}/hook")
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["id"])

    def all_delivered() -> bool:
        delivered = {r.webhook_id for r in receiver.requests() if r.status == 200}
        return len(delivered) == JOBS

    wait_for(all_delivered, timeout=120)
    by_id: dict[str, list[Received]] = {}
    for request in receiver.requests():
        by_id.setdefault(request.webhook_id, []).append(request)
    assert len(by_id) == JOBS
    for webhook_id, requests in by_id.items():
        requests.sort(key=lambda r: r.start)
        for before, after in itertools.pairwise(requests):
            assert after.start >= before.answered, f"{webhook_id}: two attempts overlapped"
        assert [r.status for r in requests][-1] == 200
    retried = [w for w, requests in by_id.items() if len(requests) > 1]
    assert len(retried) == JOBS // 2

    def states() -> set[str]:
        with httpx.Client(timeout=10) as client:
            jobs = [client.get(f"{a.url}/v1/jobs/{job_id}").json() for job_id in ids]
        return {job["callback"]["state"] for job in jobs}

    wait_for(lambda: states() == {"delivered"}, timeout=30)  # recorded after the receiver's 200
    # Both nodes made attempts.
    logs = [node.log() for node in (a, b)]
    assert all("webhook attempt" in log for log in logs), c.logs()

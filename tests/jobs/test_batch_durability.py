"""A batch is one commit: a real ``outlast serve`` killed with SIGKILL right after a batch's
``200`` arrives has every job that answer admitted once it is started again on the same store
(on each store backend)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.conftest import ServerProcess

pytestmark = pytest.mark.slow

BATCHES = 5
PER_BATCH = 200


def test_every_admitted_job_survives_kill_9_right_after_the_answer(
    jobs_server_factory: Callable[..., ServerProcess],
) -> None:
    # No workers: admitted jobs stay queued; capacity below the total, so some are refused.
    server = jobs_server_factory(
        args=["--no-jobs"], env={"OUTLAST_QUEUES__DEFAULT__CAPACITY": "900"}
    ).start()
    admitted: dict[str, dict[str, object]] = {}
    refused = 0
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for batch in range(BATCHES):
            jobs = [{"task": "echo", "input": {"b": batch, "i": i}} for i in range(PER_BATCH)]
            resp = client.post("/v1/jobs/batch", json={"jobs": jobs})
            assert resp.status_code == 200, resp.text
            for answer in resp.json()["jobs"]:
                if answer["status"] == 202:
                    admitted[answer["job"]["id"]] = answer["job"]["input"]
                else:
                    assert answer["status"] == 429, answer
                    refused += 1
    server.kill()  # SIGKILL, at once after the last answer: no shutdown phase runs
    assert len(admitted) == 900 and refused == BATCHES * PER_BATCH - 900

    server.start()
    found: dict[str, object] = {}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        cursor: str | None = None
        while True:
            params = {"limit": "500", **({"cursor": cursor} if cursor else {})}
            page = client.get("/v1/jobs", params=params).json()
            found.update({job["id"]: job["input"] for job in page["jobs"]})
            cursor = page["next"]
            if cursor is None:
                break
        queues = {q["name"]: q for q in client.get("/v1/queues").json()["queues"]}
    assert found == admitted
    assert queues["default"]["queued"] == 900

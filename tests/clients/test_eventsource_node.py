"""The real npm ``eventsource`` client (v4, on node) follows a relay's events across a server
restart: it reconnects with ``Last-Event-ID`` and gets the rest with no gap and no duplicate,
then stops for good on the ``204`` that follows the end."""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.clients.helpers import CLIENTS, LineReader, as_received, expected_events
from tests.conftest import ServerProcess, wait_for
from tests.relay.helpers import finished, relay_server, submit

pytestmark = pytest.mark.slow


@pytest.fixture
def node_client() -> Iterator[Callable[[str], LineReader]]:
    node = shutil.which("node")
    assert node is not None, "node is needed: scripts/test installs it"
    assert (CLIENTS / "node_modules" / "eventsource").is_dir(), "run npm ci in tests/clients"
    started: list[LineReader] = []

    def start(url: str) -> LineReader:
        reader = LineReader([node, str(CLIENTS / "follow_events.mjs"), url], cwd=CLIENTS)
        started.append(reader)
        return reader

    yield start
    for reader in started:
        reader.close()


def test_eventsource_resumes_across_a_server_restart(
    server_factory: Callable[..., ServerProcess],
    upstream: Any,
    node_client: Callable[[str], LineReader],
) -> None:
    server = relay_server(server_factory, upstream, OUTLAST_SERVER__GRACE="30")
    job_id = submit(server, "/sse?n=60&interval=0.05&key=node")
    client = node_client(f"{server.url}/v1/jobs/{job_id}/events")

    def events() -> list[dict[str, Any]]:
        return [r for r in client.records() if r["type"] == "event"]

    wait_for(lambda: sum(e["event"] == "message" for e in events()) >= 5, timeout=30)
    # The connection is cut: a deploy restarts outlast. The relay finishes during the grace
    # period, the reader is ended, and the client keeps retrying until the server is back.
    server.signal(signal.SIGTERM)
    assert server.wait_exit(timeout=60) == 0
    cut_at = len(events())
    server.start()
    assert client.wait(timeout=90) == 0, client.stderr()

    records = client.records()
    received = [as_received(e["event"], e["data"]) for e in events()]
    assert received == expected_events(server, job_id)  # everything, in order, once
    assert len(received) > cut_at  # ... and some of it came after the restart
    ids = [e["id"] for e in events()]
    assert ids == sorted(set(ids))
    requests = [r for r in records if r["type"] == "request"]
    assert requests[0]["lastEventId"] is None
    resumed = [r["lastEventId"] for r in requests[1:]]
    assert events()[cut_at - 1]["id"] in resumed  # it asked for what followed its last event
    assert [r["code"] for r in records if r["type"] == "error"][-1] == 204
    assert records[-1]["type"] == "closed"
    assert finished(server, job_id)["state"] == "succeeded"
    assert upstream.completed["node"] == 1

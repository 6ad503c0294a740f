"""Headless Chromium (the system's ``/usr/bin/chromium``, driven by playwright) follows a relay's
events with ``EventSource`` from a page on another, configured origin (``[cors] origins``): it
receives every event, and after the end gets ``204`` and stops for good."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.clients.helpers import (
    CLIENTS,
    as_received,
    expected_events,
    in_chromium,
    static_site,
)
from tests.conftest import ServerProcess
from tests.relay.helpers import finished, relay_server, submit

pytestmark = pytest.mark.slow


@pytest.fixture
def page_origin() -> Iterator[str]:
    """A static server on 127.0.0.1 for the test page: another origin than outlast's."""
    with static_site(CLIENTS) as url:
        yield url


def test_browser_eventsource_gets_every_event_then_stops(
    server_factory: Callable[..., ServerProcess], upstream: Any, page_origin: str
) -> None:
    # The page's origin is configured: pages on other origins are refused.
    server = relay_server(server_factory, upstream, OUTLAST_CORS__ORIGINS=json.dumps([page_origin]))
    job_id = submit(server, "/sse?n=40&interval=0.02&key=browser")
    events_url = f"{server.url}/v1/jobs/{job_id}/events"
    report = in_chromium(
        f"{page_origin}/eventsource.html?events={events_url}",
        until="window.report.closed === true",
        result="window.report",
    )
    received = [as_received(e["event"], e["data"]) for e in report["events"]]
    assert received == expected_events(server, job_id)
    ids = [e["id"] for e in report["events"]]
    assert ids == sorted(set(ids))
    assert finished(server, job_id)["result"] == {"status": 200, "events": 41, "done": True}
    # One stream; its end makes the browser reconnect (an error event while CONNECTING), and
    # that reconnect is answered 204: an error event with the source CLOSED, for good.
    assert report["opens"] == 1
    assert report["errors"] == [0, 2]
    assert httpx.get(events_url, headers={"Last-Event-ID": ids[-1]}).status_code == 204

"""Headless Chromium (the system's ``/usr/bin/chromium``, driven by playwright) follows a relay's
events with ``EventSource`` from a page on another origin: it receives every event, and after
the end gets ``204`` and stops for good."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import sync_playwright

from tests.clients.helpers import CLIENTS, as_received, expected_events
from tests.conftest import ServerProcess
from tests.relay.helpers import finished, relay_server, submit

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def page_origin() -> Iterator[str]:
    """A static server on 127.0.0.1 for the test page: another origin than outlast's."""
    handler = lambda *a: _Quiet(*a, directory=str(CLIENTS))  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def test_browser_eventsource_gets_every_event_then_stops(
    server_factory: Callable[..., ServerProcess], upstream: Any, page_origin: str
) -> None:
    server = relay_server(server_factory, upstream)
    job_id = submit(server, "/sse?n=40&interval=0.02&key=browser")
    events_url = f"{server.url}/v1/jobs/{job_id}/events"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{page_origin}/eventsource.html?events={events_url}")
            page.wait_for_function("window.report.closed === true", timeout=60_000)
            report = page.evaluate("window.report")
        finally:
            browser.close()
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

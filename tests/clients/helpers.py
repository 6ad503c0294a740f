"""What the real-client tests share: the events a job's native SSE view must deliver, read
independently from the job's durable stream, and a subprocess whose output lines are collected
as they come."""

from __future__ import annotations

import contextlib
import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.conftest import ServerProcess
from tests.relay.helpers import all_messages

CLIENTS = Path(__file__).parent
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


def in_chromium(url: str, *, until: str, result: str, timeout: float = 60) -> Any:
    """Open *url* in headless Chromium, wait until the page's JavaScript *until* holds, and
    return the value of *result* evaluated in the page."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_function(until, timeout=timeout * 1000)
            return page.evaluate(result)
        finally:
            browser.close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def static_site(directory: Path) -> Iterator[str]:
    """The files of *directory* served on 127.0.0.1 (a port of its own: another origin than
    outlast's); yields its base URL."""
    handler = lambda *a: _Quiet(*a, directory=str(directory))  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def expected_events(server: ServerProcess, job_id: str) -> list[tuple[str, Any]]:
    """``(event type, data)`` of every message of the job's stream, as the SSE view renders
    them: upstream events under their own type, the rest as ``outlast.<type>`` JSON."""
    out: list[tuple[str, Any]] = []
    for message in all_messages(server, job_id):
        if message["type"] == "event":
            out.append((message.get("event") or "message", message["data"]))
        else:
            out.append((f"outlast.{message['type']}", message))
    return out


def as_received(event: str, data: str) -> tuple[str, Any]:
    return (event, json.loads(data) if event.startswith("outlast.") else data)


class LineReader:
    """Runs a command and gathers its stdout lines in a thread (the test waits on them)."""

    def __init__(self, args: list[str], **popen: Any) -> None:
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
        )
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.lines) if line.startswith("{")]

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        self._thread.join(timeout=10)
        return code

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def close(self) -> None:
        """Kill it if it still runs, and release its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._thread.join(timeout=10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

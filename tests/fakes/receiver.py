"""A webhook receiver on 127.0.0.1 for tests: records every request with when it came and went,
and answers as the test's script says."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# The secret the test servers sign with, and settings that let them call this receiver.
SECRET = "whsec_" + base64.b64encode(b"outlast webhook test secret 0123").decode()


def hook_env(**extra: str) -> dict[str, str]:
    """Webhook settings for a test server: the secret, loopback allowed, a fast schedule
    (``backoff_scale`` 0.1: about 0.5 s, then 3 s, between attempts)."""
    env = {
        "OUTLAST_WEBHOOKS__SECRET": SECRET,
        "OUTLAST_WEBHOOKS__ALLOWED_HOSTS": '["127.0.0.1"]',
        "OUTLAST_WEBHOOKS__ALLOW_PRIVATE": "true",
        "OUTLAST_WEBHOOKS__BACKOFF_SCALE": "0.1",
        "OUTLAST_WEBHOOKS__TIMEOUT": "5",
    }
    env.update(extra)
    return env


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    start: float  # time.time() when the request arrived
    answered: float = 0.0  # when the answer was about to be sent (nobody had it before)
    end: float = 0.0  # when the answer had been written
    status: int = 0

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hold: threading.Event | None = None  # answer only once set (an attempt kept in flight)
    delay: float = 0.0  # seconds to wait before answering


# The script: given the request and how many earlier requests carried its webhook-id, the answer.
Script = Callable[[Received, int], Answer]


class Receiver:
    def __init__(self, script: Script | None = None) -> None:
        self.script: Script = script or (lambda request, earlier: Answer())
        self.received: list[Received] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                start = time.time()
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                request = Received(self.path, headers, body, start)
                with receiver.lock:
                    earlier = sum(
                        1
                        for r in receiver.received
                        if r.headers.get("webhook-id") == headers.get("webhook-id")
                    )
                    receiver.received.append(request)
                answer = receiver.script(request, earlier)
                if answer.hold is not None:
                    answer.hold.wait(60)
                if answer.delay:
                    threading.Event().wait(answer.delay)
                request.answered = time.time()
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                request.status = answer.status
                request.end = time.time()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def requests(self, webhook_id: str | None = None, path: str | None = None) -> list[Received]:
        with self.lock:
            return [
                r
                for r in self.received
                if (webhook_id is None or r.headers.get("webhook-id") == webhook_id)
                and (path is None or r.path == path)
            ]
